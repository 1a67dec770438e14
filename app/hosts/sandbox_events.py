"""``POST /v1/hosts/sandbox-events``: autonomous host events → capsule state + canonical events (§10.4)."""

from __future__ import annotations

import uuid
from typing import Any

from app.audit import service as audit
from app.capsules.models import Capsule
from app.capsules.state import TERMINAL, cas
from app.core import ids
from app.core.errors import Forbidden, InvalidRequest
from app.core.state import AppState
from app.events import service as events

# agent event → (canonical event, outcome, extra metadata)
PUBLISH_ONLY: dict[str, tuple[str, str, dict[str, str]]] = {
    "sandbox.started": ("capsule.create", "success", {}),
    "sandbox.resumed": ("capsule.resume", "success", {}),
    "sandbox.paused": ("capsule.pause", "success", {}),
    "sandbox.pause_failed": ("capsule.pause", "error", {"reason": "host_failure"}),
    "sandbox.resume_failed": ("capsule.resume", "error", {"reason": "host_failure"}),
}
FAILURE_VERB = {"starting": "create", "resuming": "resume", "pausing": "pause"}
# Where a failure leaves a capsule, by the transition it interrupted (§6.2).
FAILURE_STATE = {"starting": "error", "resuming": "paused", "pausing": "running"}


async def accept(state: AppState, caller: uuid.UUID, body: dict[str, Any]) -> None:
    for field in ("event", "sandbox_id", "host_id"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise InvalidRequest(f"{field}: field required")
    if ids.try_decode(ids.HOST, body["host_id"]) != caller:
        raise Forbidden("host_id does not match the token")
    capsule_id = ids.try_decode(ids.CAPSULE, body["sandbox_id"])
    if capsule_id is None:
        raise InvalidRequest("sandbox_id: invalid capsule id")
    name: str = body["event"]
    async with state.db() as db, db.begin():
        capsule = await db.get(Capsule, capsule_id, with_for_update=True)
        # A host may only speak for its own capsules; anything else is ignored, not trusted.
        if capsule is None or capsule.host_id != caller:
            return
        event = await _apply(db, capsule, name, body)
        if event is not None and event.get("outcome") == "error" or name == "sandbox.auto_paused":
            await audit.record(db, None, capsule.team_id, "sandbox", body["sandbox_id"],
                               event["event"].split(".")[1] if event else name,
                               status="info" if name == "sandbox.auto_paused" else "error",
                               metadata=event.get("metadata", {}) if event else {})
    if event is not None:
        await events.publish(state.redis, event)


async def _apply(db: Any, capsule: Capsule, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
    ref = ids.encode(ids.CAPSULE, capsule.id)
    meta: dict[str, str] = {}
    if body.get("host_ip"):
        meta["host_ip"] = str(body["host_ip"])
    if name in PUBLISH_ONLY:
        canonical, outcome, extra = PUBLISH_ONLY[name]
        return events.make_event(canonical, capsule.team_id, ref, "sandbox", outcome=outcome,
                                 metadata={**meta, **extra}, error=body.get("error") if outcome == "error" else None)
    if name == "sandbox.auto_paused":
        if not await cas(db, capsule.id, ("running", "pausing"), "paused"):
            return None
        return events.make_event("capsule.pause", capsule.team_id, ref, "sandbox", outcome="success",
                                 metadata={"reason": "ttl_expired"})
    if name == "sandbox.stopped":
        if not await cas(db, capsule.id, _non_terminal(), "stopped"):
            return None
        return events.make_event("capsule.destroy", capsule.team_id, ref, "sandbox", outcome="success")
    if name in ("sandbox.error", "sandbox.failed"):
        verb = FAILURE_VERB.get(capsule.status, "destroy")
        target = FAILURE_STATE.get(capsule.status, "error")
        await cas(db, capsule.id, (capsule.status,), target, error=str(body.get("error") or "host failure")[:2000])
        return events.make_event(f"capsule.{verb}", capsule.team_id, ref, "sandbox", outcome="error",
                                 metadata={"reason": "host_failure"}, error=str(body.get("error") or "host failure"))
    return None  # unknown names are accepted and ignored


def _non_terminal() -> tuple[str, ...]:
    return tuple(s for s in ("pending", "starting", "running", "pausing", "paused", "resuming", "stopping",
                             "missing") if s not in TERMINAL)
