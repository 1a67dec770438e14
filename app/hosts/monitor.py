"""Host monitor (control-plane.md §10.3): silent hosts become ``unreachable`` and their capsules
``missing``; reachable hosts are reconciled against ``ListSandboxes`` (the agent is the truth)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

from sqlalchemy import or_, select, update

from app.audit import service as audit
from app.capsules.models import Capsule
from app.capsules.state import cas
from app.core import clock, ids
from app.core.state import AppState
from app.events import service as events
from app.hostagent.client import AgentError
from app.hostagent.proto import hostagent_pb2 as pb
from app.hosts import agents
from app.hosts.models import Host

log = logging.getLogger("wrenn.monitor")

TRANSIENT_GRACE = timedelta(minutes=2)
_pending: set[asyncio.Task[None]] = set()


async def tick(state: AppState) -> None:
    async with state.db() as db:
        hosts = list(await db.scalars(select(Host).where(Host.status.not_in(("pending", "offline")))))
    dead_after = timedelta(seconds=state.settings.host_dead_after_sec)
    now = clock.now()
    for host in hosts:
        silent = host.last_heartbeat_at is None or now - host.last_heartbeat_at > dead_after
        if silent:
            if host.status != "unreachable":
                await mark_unreachable(state, host)
        elif host.status == "online" and host.address:
            await reconcile(state, host.id)


async def mark_unreachable(state: AppState, host: Host) -> None:
    host_ref = ids.encode(ids.HOST, host.id)
    async with state.db() as db, db.begin():
        won = await db.execute(update(Host).where(Host.id == host.id, Host.status != "unreachable")
                               .values(status="unreachable", updated_at=clock.now()))
        if not won.rowcount:  # type: ignore[attr-defined]
            return
        lost = (Capsule.host_id == host.id, Capsule.status.in_(("running", "starting", "pending")))
        missing = (await db.execute(select(Capsule.id, Capsule.team_id, Capsule.status).where(*lost)
                                    .with_for_update())).all()
        await db.execute(update(Capsule).where(*lost).values(status="missing", last_updated=clock.now()))
        await audit.record(db, None, host.team_id, "host", host_ref, "marked_down", status="error",
                           scope="admin" if host.team_id is None else "team")
    log.warning("host %s is unreachable; its capsules are missing", host_ref)
    await events.publish(state.redis, events.make_event("host.down", host.team_id, host_ref, "host",
                                                        metadata={"reason": "unreachable"}))
    for capsule_id, team_id, before in missing:
        await events.publish(state.redis, events.make_event(
            "capsule.state.changed", team_id, ids.encode(ids.CAPSULE, capsule_id), "sandbox",
            metadata={"from": before, "to": "missing", "reason": "host_failure"}))


def reconcile_soon(state: AppState, host_id: uuid.UUID) -> None:
    """Reconcile a host that just came back, without delaying its heartbeat answer."""
    task = asyncio.create_task(reconcile(state, host_id))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def reconcile(state: AppState, host_id: uuid.UUID) -> None:
    async with state.db() as db:
        host = await db.get(Host, host_id)
    if host is None or not host.address:
        return
    # Only rows last changed before the listing can be compared with it: a capsule created (or
    # resumed) while ListSandboxes was in flight is absent from it without being gone.
    listed_at = clock.now()
    try:
        listed = await agents.client_for(state, host.id, host.address).list_sandboxes(pb.ListSandboxesRequest(),
                                                                                      timeout_s=20)
    except AgentError as exc:
        log.info("reconcile %s skipped: %s", host_id, exc.code)  # transient; the passive check decides
        return
    reported = {s.sandbox_id: s.status for s in listed.sandboxes}
    auto_paused = set(listed.auto_paused_sandbox_ids)
    async with state.db() as db:
        rows = list(await db.scalars(select(Capsule).where(
            Capsule.host_id == host_id, Capsule.last_updated < listed_at,
            or_(Capsule.status.not_in(("stopped", "error")), Capsule.id.in_(_ids(reported))))))
    for capsule in rows:
        await _reconcile_capsule(state, host, capsule, reported, auto_paused)


def _ids(reported: dict[str, str]) -> list[uuid.UUID]:
    return [u for u in (ids.try_decode(ids.CAPSULE, r) for r in reported) if u is not None]


async def _reconcile_capsule(
    state: AppState, host: Host, capsule: Capsule, reported: dict[str, str], auto_paused: set[str]
) -> None:
    ref = ids.encode(ids.CAPSULE, capsule.id)
    alive = reported.get(ref)
    status = capsule.status
    stale = clock.now() - capsule.last_updated > TRANSIENT_GRACE
    change: Change | None = None
    if status == "missing":
        if alive in ("running", "paused"):
            change = (alive, "capsule.pause" if alive == "paused" else None,
                      {"reason": "restored_after_host_recovery"})
        else:
            change = ("stopped", "capsule.destroy", {"reason": "orphaned"})
    elif status == "running" and alive == "paused":
        change = ("paused", "capsule.pause", {"reason": "host_state_sync"})
    elif status == "running" and alive is None:
        if ref in auto_paused:
            change = ("paused", "capsule.pause", {"reason": "ttl_expired"})
        else:
            change = ("stopped", "capsule.destroy", {"reason": "orphaned"})
    elif status in ("starting", "resuming") and alive == "running":
        change = ("running", None, {})
    elif status in ("starting", "resuming", "pausing", "stopping") and alive is None and stale:
        target = {"starting": "error", "resuming": "error", "pausing": "paused", "stopping": "stopped"}[status]
        reason = "transient_timeout" if target == "error" else "transient_timeout_inferred"
        change = (target, None, {"reason": reason})
    elif status in ("stopped", "error") and alive in ("paused", "running"):
        await _destroy_zombie(state, host, ref)
        return
    if change is not None:
        await _apply(state, capsule, status, change)


Change = tuple[str, str | None, dict[str, str]]  # (new status, event to publish, metadata)


async def _apply(state: AppState, capsule: Capsule, expected: str, change: Change) -> None:
    new, event_name, metadata = change
    async with state.db() as db, db.begin():
        if not await cas(db, capsule.id, (expected,), new):
            return
        if event_name is not None:
            await audit.record(db, None, capsule.team_id, "sandbox", ids.encode(ids.CAPSULE, capsule.id),
                               event_name.split(".")[1], status="info", metadata=metadata)
    if event_name is not None:
        await events.publish(state.redis, events.make_event(
            event_name, capsule.team_id, ids.encode(ids.CAPSULE, capsule.id), "sandbox", outcome="success",
            metadata=metadata))
    await events.publish(state.redis, events.make_event(
        "capsule.state.changed", capsule.team_id, ids.encode(ids.CAPSULE, capsule.id), "sandbox",
        metadata={"from": expected, "to": new}))


async def _destroy_zombie(state: AppState, host: Host, ref: str) -> None:
    try:
        await agents.client_for(state, host.id, host.address).destroy_sandbox(pb.DestroySandboxRequest(sandbox_id=ref))
        log.info("destroyed zombie %s on %s (reason paused_zombie_cleanup)", ref, host.id)
    except AgentError as exc:
        log.info("zombie cleanup of %s failed: %s", ref, exc.code)

