"""Template builds (control-plane.md §9.3, §3.12): submit, list, get, cancel. The work happens in the build
worker (``app/builds/worker.py``); this module owns the records, the name rules, audit and events.

Name rules for the template a build produces (checked at submit and again when the template is registered):
``minimal`` → 409 ``name_reserved``; a team's template of that name → 409 ``template_name_taken`` (platform
and team names are exclusive, §3.8); an existing platform template → 409 ``template_name_taken`` unless the
recipe says ``"overwrite": true`` (capsules running on the replaced template keep running: its files are
removed once they are gone); a queued or running build of the same name → 409 ``conflict``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth.identity import Identity
from app.builds import recipe as recipes
from app.builds.models import TemplateBuild
from app.builds.schemas import (
    FINISHED,
    MAX_TAIL_LINES,
    META_BUILD_ENV,
    META_CANCELLED_BY,
    META_CLEANED,
    META_CREATED_BY,
    META_CREATED_BY_EMAIL,
    META_DESCRIPTION,
    META_LABELS,
    META_OVERWRITE,
    META_PHASE,
    STATUSES,
    StepState,
    build_json,
)
from app.core import clock, ids
from app.core.errors import Conflict, InvalidRequest, InvalidState, NotFound
from app.core.state import AppState
from app.events import service as events
from app.snapshots.models import Template
from app.snapshots.service import MINIMAL, NameReserved, NameTaken

log = logging.getLogger("wrenn.builds")

QUEUE = "wrenn:build_queue"
ACTIVE = ("pending", "running")
LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
RESOURCE = "build"


def ref(build_id: uuid.UUID) -> str:
    return ids.encode(ids.BUILD, build_id)


def creator(build: TemplateBuild) -> Identity:
    """The admin who submitted the build: the build capsule and the template are made in their name."""
    meta = build.metadata_ or {}
    user_id = ids.try_decode(ids.USER, str(meta.get(META_CREATED_BY) or ""))
    return Identity(kind="session", team_id=ids.ZERO_UUID, user_id=user_id,
                    email=str(meta.get(META_CREATED_BY_EMAIL) or ""), is_admin=True)


async def publish(state: AppState, name: str, build_id: uuid.UUID, *, who: Identity | None = None,
                  outcome: str | None = None, metadata: dict[str, Any] | None = None,
                  error: str | None = None) -> None:
    """Build events: platform team, resource type ``build``; only the admin stream relays them."""
    await events.publish(state.redis, events.make_event(
        name, ids.ZERO_UUID, ref(build_id), RESOURCE, who=who, outcome=outcome,
        metadata={k: str(v) for k, v in (metadata or {}).items() if v is not None}, error=error))


# --- name rules ----------------------------------------------------------------------------------


async def check_name(db: AsyncSession, name: str, overwrite: bool, *, lock: bool = False) -> Template | None:
    """Whether a build may produce the platform template ``name``; returns the template it would replace
    (whose files are removed once no live capsule runs on them)."""
    query = select(Template).where(Template.name == name)
    if lock:
        query = query.with_for_update()
    replaced: Template | None = None
    for row in await db.scalars(query):
        if row.id == MINIMAL:
            raise NameReserved(f"{name!r} is the built-in template and cannot be replaced")
        if row.team_id != ids.ZERO_UUID:
            raise NameTaken(f"{name!r} is the name of a team's template; platform and team names are exclusive")
        if not overwrite:
            raise NameTaken(f"a platform template named {name!r} already exists "
                            "(set \"overwrite\": true in the recipe to replace it)")
        replaced = row
    return replaced


# --- submit --------------------------------------------------------------------------------------


async def submit(state: AppState, who: Identity, body: Any) -> dict[str, Any]:
    """``POST /v1/admin/builds``: validate the recipe, record the build (``pending``) and queue it."""
    recipe = recipes.parse(body)
    async with state.db() as db, db.begin():
        base = await db.scalar(select(Template).where(Template.name == recipe.base,
                                                      Template.team_id == ids.ZERO_UUID))
        if base is None:
            raise InvalidRequest(f"base: no platform template named {recipe.base!r}")
        await check_name(db, recipe.name, recipe.overwrite)
        busy = await db.scalar(select(TemplateBuild).where(TemplateBuild.name == recipe.name,
                                                           TemplateBuild.status.in_(ACTIVE)).limit(1))
        if busy is not None:
            raise Conflict(f"build {ref(busy.id)} of {recipe.name!r} is already {busy.status}")
        template_env = {str(k): str(v) for k, v in (base.default_env or {}).items()}
        for step in recipe.steps:
            if step.kind == "env":
                template_env.update(step.env)
        build = TemplateBuild(
            id=ids.new_uuid(), name=recipe.name, base_template=recipe.base,
            recipe=[s.to_json() for s in recipe.steps], healthcheck=recipe.healthcheck,
            vcpus=recipe.vcpus, memory_mb=recipe.memory_mb, status="pending", current_step=0,
            total_steps=len(recipe.steps),
            logs=[StepState(step=s.index, name=s.name, kind=s.kind).to_json() for s in recipe.steps],
            error="", team_id=ids.ZERO_UUID, skip_pre_post=recipe.skip_pre_post,
            default_user=recipe.default_user or base.default_user, default_env=template_env,
            metadata_={
                META_DESCRIPTION: recipe.description, META_LABELS: recipe.metadata, META_BUILD_ENV: recipe.env,
                META_OVERWRITE: recipe.overwrite, META_PHASE: "queued", META_CLEANED: False,
                META_CREATED_BY: ids.encode(ids.USER, who.user_id) if who.user_id else None,
                META_CREATED_BY_EMAIL: who.email or None,
            },
            created_at=clock.now(),
        )
        db.add(build)
        await audit.record(db, who, ids.ZERO_UUID, RESOURCE, ref(build.id), "create", scope="admin",
                           metadata={"name": recipe.name, "base_template": recipe.base,
                                     "steps": len(recipe.steps), "overwrite": recipe.overwrite})
    await enqueue(state, build.id)
    await publish(state, "build.queued", build.id, who=who,
                  metadata={"name": build.name, "base_template": build.base_template,
                            "total_steps": build.total_steps})
    return build_json(build)


async def enqueue(state: AppState, build_id: uuid.UUID) -> None:
    """RPUSH onto ``wrenn:build_queue``; a lost push is repaired by the worker's sweep."""
    try:
        await state.redis.rpush(QUEUE, str(build_id))  # type: ignore[misc]
    except RedisError:
        log.exception("could not queue build %s; the worker's sweep will pick it up", build_id)


# --- reads ---------------------------------------------------------------------------------------


async def load(db: AsyncSession, build_ref: str, *, lock: bool = False) -> TemplateBuild:
    build_id = ids.decode(ids.BUILD, build_ref, "build id")
    query = select(TemplateBuild).where(TemplateBuild.id == build_id)
    if lock:
        query = query.with_for_update()
    build = await db.scalar(query)
    if build is None:
        raise NotFound(f"build {build_ref} not found")
    return build


async def list_builds(state: AppState, status: str | None, limit: int) -> list[dict[str, Any]]:
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"status: must be one of {', '.join(STATUSES)}")
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequest(f"limit: must be between 1 and {MAX_LIST_LIMIT}")
    query = select(TemplateBuild).order_by(TemplateBuild.created_at.desc(), TemplateBuild.id).limit(limit)
    if status is not None:
        query = query.where(TemplateBuild.status == status)
    async with state.db() as db:
        return [build_json(b, tail_lines=0) for b in await db.scalars(query)]


async def get(state: AppState, build_ref: str, *, logs: bool, tail_lines: int) -> dict[str, Any]:
    if not 0 <= tail_lines <= MAX_TAIL_LINES:
        raise InvalidRequest(f"tail: must be between 0 and {MAX_TAIL_LINES}")
    async with state.db() as db:
        return build_json(await load(db, build_ref), logs=logs, tail_lines=tail_lines)


# --- cancel --------------------------------------------------------------------------------------


async def cancel(state: AppState, who: Identity, build_ref: str) -> None:
    """``POST /v1/admin/builds/{id}/cancel``: a queued build is cancelled at once; a running one is marked
    ``cancelled`` and its worker stops the step, removes the build capsule and announces ``build.cancelled``.
    A finished build → 409 ``invalid_state``."""
    async with state.db() as db, db.begin():
        build = await load(db, build_ref, lock=True)
        if build.status in FINISHED:
            raise InvalidState(f"build {build_ref} is already finished (status: {build.status})")
        was = build.status
        meta = dict(build.metadata_ or {})
        meta[META_CANCELLED_BY] = who.actor_name or who.actor_id
        build.status = "cancelled"
        build.completed_at = clock.now()
        build.error = f"cancelled by {who.actor_name or 'an admin'}"
        if was == "pending":
            meta[META_PHASE], meta[META_CLEANED] = "done", True
            build.logs = [{**s, "status": "skipped"} if s.get("status") == "pending" else s
                          for s in (build.logs or [])]
        build.metadata_ = meta
        await audit.record(db, who, ids.ZERO_UUID, RESOURCE, build_ref, "cancel", scope="admin", status="warning",
                           metadata={"name": build.name, "was": was})
    if was == "pending":
        await publish(state, "build.cancelled", build.id, who=who, metadata={"name": build.name})
        return
    worker = state.extras.get("build_worker")
    if worker is not None:
        worker.cancel(build.id)  # this process runs it: stop now (other replicas notice within a second)
