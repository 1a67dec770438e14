"""Snapshots and templates (control-plane.md §9.1–9.2, §5.4, §22 rows 18–19).

A snapshot is a template row plus files on the host that made it (``<templates>/<team>/<template id>``).
The host is remembered in ``metadata.host_id`` so the scheduler places capsules made from it there.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.accounts.models import User
from app.audit import service as audit
from app.auth.identity import Identity
from app.capsules import service as capsules
from app.capsules.errors import agent_failure
from app.capsules.models import Capsule
from app.capsules.scheduler import template_host
from app.capsules.state import TERMINAL
from app.core import clock, ids, validation
from app.core.errors import ApiError, Conflict, Forbidden, InvalidRequest, NotFound
from app.core.state import AppState
from app.events import service as events
from app.hostagent.client import AgentClient, AgentError
from app.hostagent.proto import hostagent_pb2 as pb
from app.hosts import agents
from app.hosts.models import Host
from app.snapshots.models import Template
from app.teams.models import Team

log = logging.getLogger("wrenn.snapshots")

SNAPSHOT_LIMIT = 300  # seconds; the RPC continues even if the client disconnects
SIZE_LIMIT = 10.0
SIZE_RETRY = 60.0
DELETE_LIMIT = 30.0
RETIRE_POLL = 2.0
RETIRE_WAIT = 7 * 24 * 3600.0
HOST_KEY = "host_id"
MINIMAL = ids.ZERO_UUID
TYPES = ("base", "snapshot")

T = TypeVar("T")


class NameReserved(ApiError):
    status = 409
    code = "name_reserved"


class NameTaken(ApiError):
    status = 409
    code = "template_name_taken"


# --- JSON -----------------------------------------------------------------------------------


def template_json(t: Template) -> dict[str, Any]:
    """The spec's ``Template`` (sdk-wire.md §5.1). The internal ``host_id`` key is not shown to teams."""
    metadata = {str(k): str(v) for k, v in (t.metadata_ or {}).items() if k != HOST_KEY}
    return {
        "name": t.name,
        "type": t.type if t.type in TYPES else "base",
        "vcpus": t.vcpus,
        "memory_mb": t.memory_mb,
        "size_bytes": int(t.size_bytes),
        "created_at": clock.iso(t.created_at),
        "platform": t.team_id == ids.ZERO_UUID,
        "metadata": metadata,
    }


def admin_template_json(t: Template, team_name: str | None, creator_email: str | None) -> dict[str, Any]:
    host = template_host(t)
    return {
        **template_json(t),
        "origin": "platform" if t.team_id == ids.ZERO_UUID else "team",
        "team_id": ids.encode(ids.TEAM, t.team_id),
        "team_name": team_name or "",
        "created_by": ids.encode(ids.USER, t.created_by) if t.created_by else None,
        "created_by_email": creator_email,
        "host_id": ids.encode(ids.HOST, host) if host else None,
        "protected": t.id == MINIMAL,
    }


# --- helpers --------------------------------------------------------------------------------


async def _detached(state: AppState, coro: Awaitable[T], name: str) -> T:
    """Run ``coro`` as its own task and wait for it; a client disconnect cancels only the waiting."""
    tasks: set[asyncio.Task[Any]] = state.extras.setdefault("snapshot_tasks", set())
    task: asyncio.Task[T] = asyncio.ensure_future(coro)
    task.set_name(name)
    tasks.add(task)

    def done(t: asyncio.Task[T]) -> None:
        tasks.discard(t)
        if not t.cancelled():
            t.exception()  # retrieved: an unattended failure is already audited and published

    task.add_done_callback(done)
    return await asyncio.shield(task)


async def _online_hosts(state: AppState) -> list[Host]:
    async with state.db() as db:
        return list(await db.scalars(
            select(Host).where(Host.status == "online", Host.address != "").order_by(Host.created_at)
        ))


def _client(state: AppState, host: Host) -> AgentClient:
    return agents.client_for(state, host.id, host.address)


async def _delete_files(state: AppState, team_id: uuid.UUID, template_id: uuid.UUID) -> None:
    """Broadcast ``DeleteSnapshot`` to every online host; NotFound and other errors are ignored (§9.2)."""
    request = pb.DeleteSnapshotRequest(team_id=str(team_id), template_id=str(template_id))

    async def one(host: Host) -> None:
        try:
            await asyncio.wait_for(_client(state, host).delete_snapshot(request, timeout_s=DELETE_LIMIT),
                                   DELETE_LIMIT)
        except AgentError as exc:
            if exc.code != "not_found":
                log.warning("DeleteSnapshot %s on %s: %s", template_id, host.id, exc)
        except TimeoutError:
            log.warning("DeleteSnapshot %s on %s timed out", template_id, host.id)

    await asyncio.gather(*(one(h) for h in await _online_hosts(state)))


async def _in_use(state: AppState, template_id: uuid.UUID) -> int:
    async with state.db() as db:
        return int(await db.scalar(
            select(func.count()).select_from(Capsule)
            .where(Capsule.template_id == template_id, Capsule.status.not_in(TERMINAL))
        ) or 0)


async def _retire_files(state: AppState, team_id: uuid.UUID, template_id: uuid.UUID) -> None:
    """Delete a removed template's files, but only once no live capsule runs on them: a capsule's rootfs is
    an overlay whose lower layer *is* the template directory, so deleting it under a capsule would corrupt
    that capsule. If capsules still use it after ``RETIRE_WAIT``, the files are left (leaked, not broken)."""
    deadline = clock.monotonic() + RETIRE_WAIT
    while await _in_use(state, template_id):
        if clock.monotonic() > deadline:
            log.warning("template %s/%s still in use; its files are left on the hosts", team_id, template_id)
            return
        await asyncio.sleep(RETIRE_POLL)
    await _delete_files(state, team_id, template_id)


async def fill_sizes(state: AppState, templates: list[Template]) -> None:
    """Templates recorded with size 0 (built-in, builds): ask a host (``GetTemplateSize``) and cache it."""
    # A template whose host cannot tell (files not built there yet) is not asked again for a minute.
    unknown: dict[uuid.UUID, float] = state.extras.setdefault("template_size_unknown", {})
    now = clock.monotonic()
    missing = [t for t in templates if t.size_bytes <= 0 and now - unknown.get(t.id, -SIZE_RETRY) >= SIZE_RETRY]
    if not missing:
        return
    hosts = await _online_hosts(state)
    if not hosts:
        return
    by_id = {h.id: h for h in hosts}

    async def one(t: Template) -> None:
        home = template_host(t)
        host = by_id.get(home) if home else hosts[0]
        if host is None:
            return
        request = pb.GetTemplateSizeRequest(team_id=str(t.team_id), template_id=str(t.id))
        try:
            reply = await asyncio.wait_for(_client(state, host).get_template_size(request, timeout_s=SIZE_LIMIT),
                                           SIZE_LIMIT)
        except (AgentError, TimeoutError) as exc:
            log.info("GetTemplateSize %s on %s failed: %s", t.name, host.id, exc)
            unknown[t.id] = clock.monotonic()
            return
        if reply.size_bytes > 0:
            t.size_bytes = reply.size_bytes
            async with state.db() as db, db.begin():
                row = await db.get(Template, t.id)
                if row is not None and row.size_bytes <= 0:
                    row.size_bytes = reply.size_bytes

    await asyncio.gather(*(one(t) for t in missing))


async def _publish(state: AppState, verb: str, team_id: uuid.UUID, name: str, who: Identity | None,
                   outcome: str = "success", error: str | None = None,
                   metadata: dict[str, str] | None = None) -> None:
    await events.publish(state.redis, events.make_event(
        f"template.snapshot.{verb}", team_id, name, "snapshot", who=who, outcome=outcome,
        metadata={"name": name, **(metadata or {})}, error=error))


# --- create ---------------------------------------------------------------------------------


async def create(
    state: AppState, who: Identity, sandbox_ref: str, name: str | None, *, overwrite: bool = False,
    platform: bool = False,
) -> dict[str, Any]:
    """``POST /v1/snapshots`` (team template) or, with ``platform``, ``POST /v1/admin/capsules/{id}/snapshot``
    (a platform template from a capsule of any team; an existing platform template is overwritten)."""
    name = name or f"template-{ids.random_hex(4)}"
    validation.safe_name(name, "name")
    owner = ids.ZERO_UUID if platform else who.team_id
    assert owner is not None
    scope = "admin" if platform else "team"
    async with state.db() as db:
        rows = list(await db.scalars(
            select(Template).where(Template.name == name, Template.team_id.in_((owner, ids.ZERO_UUID)))
        ))
    for row in rows:
        if row.id == MINIMAL:
            raise NameReserved(f"{name!r} is the built-in template and cannot be replaced")
        if row.team_id == ids.ZERO_UUID and not platform:
            raise NameReserved(f"{name!r} is the name of a platform template")
        if row.team_id == owner and not (overwrite or platform):
            raise NameTaken(f"a template named {name!r} already exists (use overwrite=true to replace it)")
    target = await capsules.target(state, None if platform else who, sandbox_ref)  # 404 / 409 / 503
    return await _detached(state, _snapshot(state, who, target, owner, name, scope),
                           f"snapshot:{target.capsule.id}:{name}")


async def _snapshot(
    state: AppState, who: Identity, target: capsules.Target, owner: uuid.UUID, name: str, scope: str,
) -> dict[str, Any]:
    template_id = ids.new_uuid()
    capsule = target.capsule
    request = pb.CreateSnapshotRequest(sandbox_id=target.ref, name=name, team_id=str(owner),
                                       template_id=str(template_id))
    try:
        reply = await asyncio.wait_for(target.client.create_snapshot(request, timeout_s=SNAPSHOT_LIMIT),
                                       SNAPSHOT_LIMIT)
    except (AgentError, TimeoutError) as exc:
        error = exc if isinstance(exc, AgentError) else AgentError("deadline_exceeded", "snapshot timed out")
        async with state.db() as db, db.begin():
            await audit.record(db, who, owner, "snapshot", name, "create", scope=scope, status="error",
                               metadata={"sandbox_id": target.ref, "error": error.message[:500]})
        await _publish(state, "create", owner, name, who, outcome="error", error=error.message)
        raise agent_failure(error) from exc

    metadata = {str(k): str(v) for k, v in (capsule.metadata_ or {}).items()}
    metadata[HOST_KEY] = ids.encode(ids.HOST, target.host.id)
    replaced: tuple[uuid.UUID, uuid.UUID] | None = None  # (team, template id) of an overwritten template
    try:
        async with state.db() as db, db.begin():
            source = await db.get(Template, capsule.template_id) if capsule.template_id else None
            old = await db.scalar(
                select(Template).where(Template.team_id == owner, Template.name == name).with_for_update()
            )
            if old is not None:
                replaced = (old.team_id, old.id)
                await db.delete(old)
                await db.flush()
            template = Template(
                id=template_id, name=name, type="snapshot", vcpus=capsule.vcpus, memory_mb=capsule.memory_mb,
                size_bytes=reply.size_bytes, created_at=clock.now(), team_id=owner,
                # The rootfs copy carries the source's users and home directories, so keep running as the
                # source template's user (the spec's "root" would change behaviour from the source capsule).
                default_user=source.default_user if source else "root",
                default_env=dict(source.default_env or {}) if source else {},
                metadata_=metadata, created_by=who.user_id,
            )
            db.add(template)
            await audit.record(db, who, owner, "snapshot", name, "create", scope=scope,
                               metadata={"sandbox_id": target.ref, "overwrite": replaced is not None,
                                         "size_bytes": int(reply.size_bytes)})
    except IntegrityError as exc:
        # A concurrent request took the name between our check and the insert: drop our copy.
        capsules.spawn(state, _delete_files(state, owner, template_id), f"snapshot-cleanup:{template_id}")
        raise NameTaken(f"a template named {name!r} already exists") from exc
    if replaced is not None:
        capsules.spawn(state, _retire_files(state, *replaced), f"snapshot-replace:{replaced[1]}")
    await _publish(state, "create", owner, name, who, metadata={"sandbox_id": target.ref})
    return template_json(template)


# --- list / delete --------------------------------------------------------------------------


async def list_for(state: AppState, who: Identity, type_: str | None) -> list[dict[str, Any]]:
    """The team's templates plus every platform template, as a bare array."""
    if type_ is not None and type_ not in TYPES:
        raise InvalidRequest("type: must be base or snapshot")
    assert who.team_id is not None
    query = select(Template).where(Template.team_id.in_((who.team_id, ids.ZERO_UUID)))
    if type_:
        query = query.where(Template.type == type_)
    async with state.db() as db:
        rows = list(await db.scalars(query.order_by(Template.created_at.desc(), Template.name)))
    await fill_sizes(state, rows)
    return [template_json(t) for t in rows]


async def delete(state: AppState, who: Identity, name: str) -> None:
    """``DELETE /v1/snapshots/{name}``: the team's own templates only; platform ones are 403."""
    assert who.team_id is not None
    async with state.db() as db, db.begin():
        rows = list(await db.scalars(
            select(Template).where(Template.name == name, Template.team_id.in_((who.team_id, ids.ZERO_UUID)))
            .with_for_update()
        ))
        own = next((t for t in rows if t.team_id == who.team_id), None)
        if own is None:
            if rows:
                raise Forbidden(f"{name!r} is a platform template and cannot be deleted")
            raise NotFound(f"template {name!r} not found")
        template_id = own.id
        await db.delete(own)
        await audit.record(db, who, who.team_id, "snapshot", name, "delete", status="warning",
                           metadata={"type": own.type})
    if await _in_use(state, template_id):
        capsules.spawn(state, _retire_files(state, who.team_id, template_id), f"snapshot-retire:{template_id}")
    else:
        await _delete_files(state, who.team_id, template_id)
    await _publish(state, "delete", who.team_id, name, who)


# --- admin ----------------------------------------------------------------------------------


async def admin_list(state: AppState) -> list[dict[str, Any]]:
    async with state.db() as db:
        rows = (await db.execute(
            select(Template, Team.name, User.email)
            .outerjoin(Team, Team.id == Template.team_id)
            .outerjoin(User, User.id == Template.created_by)
            .order_by(Template.created_at.desc(), Template.name)
        )).all()
    templates = [row[0] for row in rows]
    await fill_sizes(state, templates)
    return [admin_template_json(t, team_name, email) for t, team_name, email in rows]


async def admin_delete(state: AppState, who: Identity, name: str) -> None:
    """``DELETE /v1/admin/templates/{name}``: a platform template that no live capsule uses."""
    async with state.db() as db, db.begin():
        template = await db.scalar(
            select(Template).where(Template.team_id == ids.ZERO_UUID, Template.name == name).with_for_update()
        )
        if template is None:
            raise NotFound(f"platform template {name!r} not found")
        if template.id == MINIMAL:
            raise Forbidden("the built-in minimal template cannot be deleted")
        if in_use := await _in_use(state, template.id):
            raise Conflict(f"template {name!r} is used by {in_use} capsule(s); destroy them first")
        template_id = template.id
        await db.delete(template)
        await audit.record(db, who, ids.ZERO_UUID, "template", name, "delete", scope="admin", status="warning",
                           metadata={"type": template.type})
    await _delete_files(state, ids.ZERO_UUID, template_id)
    await _publish(state, "delete", ids.ZERO_UUID, name, who)
