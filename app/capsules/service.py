"""Capsule lifecycle (control-plane.md §6): create/pause/resume/destroy answer 202 at once and finish in
background tasks that move the status only by compare-and-set."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth.identity import Identity
from app.capsules import scheduler
from app.capsules.errors import agent_failure
from app.capsules.models import Capsule, MetricPoint
from app.capsules.state import TERMINAL, cas
from app.core import clock, ids, validation
from app.core.errors import HostUnavailable, InvalidState, NotFound
from app.core.state import AppState
from app.events import service as events
from app.hostagent.client import AgentClient, AgentError
from app.hostagent.proto import hostagent_pb2 as pb
from app.hosts import agents
from app.hosts.models import Host
from app.snapshots.models import Template
from app.teams.models import Team

log = logging.getLogger("wrenn.capsules")

CREATE_LIMIT = 600
PAUSE_LIMIT = 300
RESUME_LIMIT = 300
SYSTEM_METADATA = ("envd_version", "kernel_version", "vmm_version", "agent_version")
LIVE = ("pending", "starting", "running", "pausing", "paused", "resuming", "stopping", "missing")


def capsule_json(c: Capsule) -> dict[str, Any]:
    return {
        "id": ids.encode(ids.CAPSULE, c.id),
        "status": c.status,
        "template": c.template,
        "vcpus": c.vcpus,
        "memory_mb": c.memory_mb,
        "timeout_sec": c.timeout_sec,
        "guest_ip": c.guest_ip,
        "host_ip": c.host_ip,
        "created_at": clock.iso(c.created_at),
        "started_at": clock.iso(c.started_at),
        "last_active_at": clock.iso(c.last_active_at),
        "last_updated": clock.iso(c.last_updated),
        "metadata": {str(k): str(v) for k, v in (c.metadata_ or {}).items()},
        "disk_size_mb": c.disk_size_mb,
    }


# --- lookups ---------------------------------------------------------------------------------


async def load(db: AsyncSession, who: Identity | None, ref: str, *, lock: bool = False) -> Capsule:
    """The caller's capsule (any team when ``who`` is None: admin routes); others' are 404."""
    capsule_id = ids.decode(ids.CAPSULE, ref, "capsule id")
    query = select(Capsule).where(Capsule.id == capsule_id)
    if who is not None:
        query = query.where(Capsule.team_id == who.team_id)
    if lock:
        query = query.with_for_update()
    capsule = await db.scalar(query)
    if capsule is None:
        raise NotFound(f"capsule {ref} not found")
    return capsule


@dataclass
class Target:
    capsule: Capsule
    host: Host
    client: AgentClient

    @property
    def ref(self) -> str:
        return ids.encode(ids.CAPSULE, self.capsule.id)


async def target(state: AppState, who: Identity | None, ref: str, *, need_running: bool = True) -> Target:
    """Shared preconditions of every sub-resource (§11): found, running, host reachable."""
    async with state.db() as db:
        capsule = await load(db, who, ref)
        if need_running and capsule.status != "running":
            raise InvalidState(f"capsule is not running (status: {capsule.status})")
        host = await db.get(Host, capsule.host_id) if capsule.host_id else None
    if host is None or not host.address:
        raise HostUnavailable("the capsule's host is not available")
    return Target(capsule, host, agents.client_for(state, host.id, host.address))


async def touch(state: AppState, capsule_id: uuid.UUID) -> None:
    """Record activity (exec, ping, stream end)."""
    async with state.db() as db, db.begin():
        await db.execute(update(Capsule).where(Capsule.id == capsule_id).values(last_active_at=clock.now()))


# --- background work ------------------------------------------------------------------------


def spawn(state: AppState, coro: Awaitable[None], name: str) -> None:
    """Run lifecycle work detached from the request (it must outlive the HTTP call)."""
    tasks: set[asyncio.Task[None]] = state.extras.setdefault("capsule_tasks", set())
    task = asyncio.ensure_future(coro)
    task.set_name(name)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _publish_change(state: AppState, capsule: Capsule, before: str, after: str) -> None:
    await events.publish(state.redis, events.make_event(
        "capsule.state.changed", capsule.team_id, ids.encode(ids.CAPSULE, capsule.id), "sandbox",
        metadata={"from": before, "to": after}))


async def _publish(state: AppState, capsule: Capsule, verb: str, outcome: str, who: Identity | None = None,
                   metadata: dict[str, str] | None = None, error: str | None = None) -> None:
    await events.publish(state.redis, events.make_event(
        f"capsule.{verb}", capsule.team_id, ids.encode(ids.CAPSULE, capsule.id), "sandbox", who=who,
        outcome=outcome, metadata=metadata, error=error))


async def _system_failure(state: AppState, capsule: Capsule, verb: str, error: str, phase: str) -> None:
    async with state.db() as db, db.begin():
        await audit.record(db, None, capsule.team_id, "sandbox", ids.encode(ids.CAPSULE, capsule.id), verb,
                           status="error", metadata={"reason": "host_failure", "phase": phase, "error": error[:500]})
    await _publish(state, capsule, verb, "error", metadata={"reason": "host_failure"}, error=error)


# --- create ---------------------------------------------------------------------------------


def clamp_timeout(value: int) -> int:
    if value <= 0:
        return 0
    return max(value, 60)


async def resolve_template(db: AsyncSession, team_id: uuid.UUID, name: str) -> Template:
    validation.safe_name(name, "template")
    rows = list(await db.scalars(
        select(Template).where(Template.name == name, Template.team_id.in_((team_id, ids.ZERO_UUID)))
    ))
    if not rows:
        raise NotFound(f"template {name!r} not found")
    # A team template shadows nothing (names are exclusive), but prefer the team's if both exist.
    return sorted(rows, key=lambda t: t.team_id == ids.ZERO_UUID)[0]


async def create(
    state: AppState, who: Identity, spec: dict[str, Any], team_id: uuid.UUID | None = None, scope: str = "team"
) -> dict[str, Any]:
    team_id = team_id or who.team_id
    assert team_id is not None
    vcpus = spec.get("vcpus") or 1
    memory_mb = spec.get("memory_mb") or 512
    vcpus, memory_mb = (vcpus if vcpus > 0 else 1), (memory_mb if memory_mb > 0 else 512)
    disk = spec.get("disk_size_mb") or 5120
    timeout = clamp_timeout(spec.get("timeout_sec") or 0)
    async with state.db() as db, db.begin():
        template = await resolve_template(db, team_id, spec.get("template") or "minimal")
        if template.type == "snapshot":
            vcpus, memory_mb = template.vcpus, template.memory_mb
        team = await db.get(Team, team_id)
        host = await scheduler.pick_host(db, team_id, bool(team and team.is_byoc), memory_mb,
                                         only_host=scheduler.template_host(template))
        now = clock.now()
        capsule = Capsule(
            id=ids.new_uuid(), team_id=team_id, host_id=host.id, template=template.name, status="starting",
            vcpus=vcpus, memory_mb=memory_mb, timeout_sec=timeout, disk_size_mb=disk if disk > 0 else 5120,
            template_id=template.id, template_team_id=template.team_id, metadata_=dict(spec.get("metadata") or {}),
            created_at=now, last_updated=now,
        )
        db.add(capsule)
        await audit.record(db, who, team_id, "sandbox", ids.encode(ids.CAPSULE, capsule.id), "create",
                           metadata={"template": template.name}, scope=scope)
    await _publish_change(state, capsule, "", "starting")
    await _publish(state, capsule, "create", "success", who=who, metadata={"template": template.name})
    request = pb.CreateSandboxRequest(
        sandbox_id=ids.encode(ids.CAPSULE, capsule.id), template=template.name, team_id=str(template.team_id),
        template_id=str(template.id), vcpus=vcpus, memory_mb=memory_mb, timeout_sec=timeout,
        disk_size_mb=capsule.disk_size_mb, default_user=template.default_user,
        default_env={str(k): str(v) for k, v in (template.default_env or {}).items()},
    )
    spawn(state, _finish_create(state, capsule, host, request), f"create:{capsule.id}")
    return capsule_json(capsule)


async def _finish_create(state: AppState, capsule: Capsule, host: Host, request: pb.CreateSandboxRequest) -> None:
    client = agents.client_for(state, host.id, host.address)
    try:
        reply = await asyncio.wait_for(client.create_sandbox(request), CREATE_LIMIT)
    except (AgentError, TimeoutError) as exc:
        message = exc.message if isinstance(exc, AgentError) else "create timed out"
        async with state.db() as db, db.begin():
            won = await cas(db, capsule.id, ("starting",), "error", error=message[:2000])
        if won:
            await _publish_change(state, capsule, "starting", "error")
            await _system_failure(state, capsule, "create", message, "create")
        return
    metadata = {**(capsule.metadata_ or {}), **{k: v for k, v in reply.metadata.items() if k in SYSTEM_METADATA}}
    now = clock.now()
    values: dict[str, Any] = {"host_ip": reply.host_ip, "started_at": now, "last_active_at": now,
                              "metadata_": metadata}
    if reply.disk_size_mb > 0:
        values["disk_size_mb"] = reply.disk_size_mb
    async with state.db() as db, db.begin():
        won = await cas(db, capsule.id, ("starting",), "running", **values)
    if not won:
        # Destroyed (or failed) while the RPC was in flight: do not leave the new sandbox running.
        await _quiet_destroy(client, request.sandbox_id)
        return
    await _publish_change(state, capsule, "starting", "running")
    await _publish(state, capsule, "create", "success", metadata={"host_ip": reply.host_ip})


async def _quiet_destroy(client: AgentClient, sandbox_ref: str) -> None:
    try:
        await client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id=sandbox_ref))
    except AgentError as exc:
        if exc.code != "not_found":
            log.warning("destroy of %s failed: %s", sandbox_ref, exc)


# --- reads ----------------------------------------------------------------------------------


async def get(state: AppState, who: Identity | None, ref: str) -> dict[str, Any]:
    async with state.db() as db:
        return capsule_json(await load(db, who, ref))


async def list_for(state: AppState, team_id: uuid.UUID | None) -> list[dict[str, Any]]:
    query = select(Capsule).where(Capsule.status.not_in(TERMINAL)).order_by(Capsule.created_at.desc())
    if team_id is not None:
        query = query.where(Capsule.team_id == team_id)
    async with state.db() as db:
        return [capsule_json(c) for c in await db.scalars(query)]


# --- pause / resume / destroy / ping --------------------------------------------------------


async def _transition(
    state: AppState, who: Identity | None, ref: str, *, already: str, expected: str, interim: str, verb: str,
) -> tuple[Capsule, bool]:
    """CAS into the transitional state; returns (capsule, started) where started=False means no-op."""
    async with state.db() as db, db.begin():
        capsule = await load(db, who, ref, lock=True)
        if capsule.status == already:
            return capsule, False
        if capsule.status != expected:
            raise InvalidState(f"capsule is not {expected} (status: {capsule.status})")
        await cas(db, capsule.id, (expected,), interim)
        await audit.record(db, who, capsule.team_id, "sandbox", ref, verb)
        capsule.status = interim
    await _publish_change(state, capsule, expected, interim)
    await _publish(state, capsule, verb, "success", who=who)
    return capsule, True


async def pause(state: AppState, who: Identity | None, ref: str) -> dict[str, Any]:
    capsule, started = await _transition(state, who, ref, already="paused", expected="running",
                                         interim="pausing", verb="pause")
    if started:
        spawn(state, _finish_pause(state, capsule), f"pause:{capsule.id}")
    return capsule_json(capsule)


async def _host_client(state: AppState, capsule: Capsule) -> AgentClient | None:
    async with state.db() as db:
        host = await db.get(Host, capsule.host_id) if capsule.host_id else None
    if host is None or not host.address:
        return None
    return agents.client_for(state, host.id, host.address)


async def _finish_pause(state: AppState, capsule: Capsule) -> None:
    ref = ids.encode(ids.CAPSULE, capsule.id)
    client = await _host_client(state, capsule)
    try:
        if client is None:
            raise AgentError("unavailable", "host is not available")
        await _persist_metrics(state, capsule, client, tiers=("10m", "2h", "24h"))
        await asyncio.wait_for(client.pause_sandbox(pb.PauseSandboxRequest(sandbox_id=ref)), PAUSE_LIMIT)
    except (AgentError, TimeoutError) as exc:
        message = exc.message if isinstance(exc, AgentError) else "pause timed out"
        async with state.db() as db, db.begin():
            if await cas(db, capsule.id, ("pausing",), "running"):
                await _publish_change(state, capsule, "pausing", "running")
        await _system_failure(state, capsule, "pause", message, "pause")
        return
    async with state.db() as db, db.begin():
        won = await cas(db, capsule.id, ("pausing",), "paused")
    if won:
        await _publish_change(state, capsule, "pausing", "paused")
        await _publish(state, capsule, "pause", "success")


async def resume(state: AppState, who: Identity | None, ref: str) -> dict[str, Any]:
    capsule, started = await _transition(state, who, ref, already="running", expected="paused",
                                         interim="resuming", verb="resume")
    if started:
        spawn(state, _finish_resume(state, capsule), f"resume:{capsule.id}")
    return capsule_json(capsule)


async def _finish_resume(state: AppState, capsule: Capsule) -> None:
    ref = ids.encode(ids.CAPSULE, capsule.id)
    client = await _host_client(state, capsule)
    async with state.db() as db:
        template = await db.get(Template, capsule.template_id) if capsule.template_id else None
    request = pb.ResumeSandboxRequest(
        sandbox_id=ref, timeout_sec=capsule.timeout_sec,
        default_user=template.default_user if template else "",
        default_env={str(k): str(v) for k, v in ((template.default_env if template else None) or {}).items()},
        kernel_version=str((capsule.metadata_ or {}).get("kernel_version", "")),
    )
    try:
        if client is None:
            raise AgentError("unavailable", "host is not available")
        reply = await asyncio.wait_for(client.resume_sandbox(request), RESUME_LIMIT)
    except (AgentError, TimeoutError) as exc:
        message = exc.message if isinstance(exc, AgentError) else "resume timed out"
        async with state.db() as db, db.begin():
            if await cas(db, capsule.id, ("resuming",), "paused"):
                await _publish_change(state, capsule, "resuming", "paused")
        await _system_failure(state, capsule, "resume", message, "resume")
        return
    now = clock.now()
    metadata = {**(capsule.metadata_ or {}), **{k: v for k, v in reply.metadata.items() if k in SYSTEM_METADATA}}
    async with state.db() as db, db.begin():
        won = await cas(db, capsule.id, ("resuming",), "running", host_ip=reply.host_ip or capsule.host_ip,
                        started_at=now, last_active_at=now, metadata_=metadata)
    if won:
        await _publish_change(state, capsule, "resuming", "running")
        await _publish(state, capsule, "resume", "success", metadata={"host_ip": reply.host_ip})


async def destroy(
    state: AppState, who: Identity | None, ref: str, *, actor: Identity | None = None, scope: str = "team"
) -> dict[str, Any]:
    """``who`` scopes the lookup (None: any team, admin routes); ``actor`` (default ``who``) is audited."""
    actor = actor or who
    async with state.db() as db, db.begin():
        capsule = await load(db, who, ref, lock=True)
        before = capsule.status
        if before in TERMINAL or before == "stopping":
            return capsule_json(capsule)  # idempotent: the SDK may send DELETE twice
        await cas(db, capsule.id, (before,), "stopping")
        await audit.record(db, actor, capsule.team_id, "sandbox", ref, "destroy", scope=scope)
        capsule.status = "stopping"
    await _publish_change(state, capsule, before, "stopping")
    await _publish(state, capsule, "destroy", "success", who=actor)
    spawn(state, _finish_destroy(state, capsule, before), f"destroy:{capsule.id}")
    return capsule_json(capsule)


async def _finish_destroy(state: AppState, capsule: Capsule, before: str) -> None:
    ref = ids.encode(ids.CAPSULE, capsule.id)
    client = await _host_client(state, capsule)
    if client is not None and before != "starting":
        if before in ("running", "pausing"):
            await _persist_metrics(state, capsule, client, tiers=("24h",))
        await _quiet_destroy(client, ref)
    # A capsule still "starting" is destroyed by the create task when its CAS loses.
    async with state.db() as db, db.begin():
        if before == "paused":
            await db.execute(delete(MetricPoint).where(
                MetricPoint.sandbox_id == capsule.id, MetricPoint.tier.in_(("10m", "2h"))))
        won = await cas(db, capsule.id, ("stopping",), "stopped")
    if won:
        await _publish_change(state, capsule, "stopping", "stopped")
        await _publish(state, capsule, "destroy", "success")


async def ping(state: AppState, who: Identity | None, ref: str) -> None:
    t = await target(state, who, ref)
    try:
        await t.client.ping_sandbox(pb.PingSandboxRequest(sandbox_id=t.ref))
    except AgentError as exc:
        raise agent_failure(exc) from exc
    await touch(state, t.capsule.id)


async def _persist_metrics(state: AppState, capsule: Capsule, client: AgentClient, tiers: tuple[str, ...]) -> None:
    """Flush the agent's ring buffers into Postgres before the sandbox goes away (best effort)."""
    from app.capsules.metrics import store_points

    try:
        flushed = await client.flush_sandbox_metrics(
            pb.FlushSandboxMetricsRequest(sandbox_id=ids.encode(ids.CAPSULE, capsule.id)), timeout_s=20)
    except AgentError:
        return
    await store_points(state, capsule.id, flushed, tiers)


# --- team teardown and user deactivation hooks ----------------------------------------------


async def stop_team_capsules(state: AppState, db: AsyncSession, team_id: uuid.UUID) -> None:
    await _stop_where(state, db, Capsule.team_id == team_id)


async def stop_owned_team_capsules(state: AppState, db: AsyncSession, team_ids: list[uuid.UUID]) -> None:
    if team_ids:
        await _stop_where(state, db, Capsule.team_id.in_(team_ids))


async def _stop_where(state: AppState, db: AsyncSession, condition: Any) -> None:
    rows = list(await db.scalars(select(Capsule).where(condition, Capsule.status.in_(LIVE))))
    for capsule in rows:
        client = await _host_client(state, capsule)
        if client is not None:
            spawn(state, _quiet_destroy(client, ids.encode(ids.CAPSULE, capsule.id)), f"teardown:{capsule.id}")
    if rows:
        await db.execute(update(Capsule).where(Capsule.id.in_([c.id for c in rows]))
                         .values(status="stopped", last_updated=clock.now()))



def register_hooks() -> None:
    """Team teardown and user deactivation stop the affected capsules."""
    from app.admin.service import USER_DISABLED_HOOKS
    from app.teams.service import TEARDOWN_HOOKS

    if stop_team_capsules not in TEARDOWN_HOOKS:
        TEARDOWN_HOOKS.append(stop_team_capsules)
    if stop_owned_team_capsules not in USER_DISABLED_HOOKS:
        USER_DISABLED_HOOKS.append(stop_owned_team_capsules)
