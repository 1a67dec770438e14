"""Platform-admin work on capsules of any team (control-plane.md §5.4, §22 row 13): admin actions are
audited with scope ``admin`` in the capsule's team, so the team sees what an operator did."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from sqlalchemy import select

from app.audit import service as audit
from app.auth.identity import Identity
from app.capsules import service as capsules
from app.capsules.models import Capsule
from app.capsules.state import TERMINAL
from app.core import ids
from app.core.errors import ApiError
from app.core.state import AppState

T = TypeVar("T")


async def with_team(state: AppState, capsule: dict[str, Any]) -> dict[str, Any]:
    """Capsule JSON plus the owning team (admins act across teams)."""
    async with state.db() as db:
        row = await capsules.load(db, None, str(capsule["id"]))
    return {**capsule, "team_id": ids.encode(ids.TEAM, row.team_id)}


async def list_all(state: AppState) -> list[dict[str, Any]]:
    query = select(Capsule).where(Capsule.status.not_in(TERMINAL)).order_by(Capsule.created_at.desc())
    async with state.db() as db:
        return [{**capsules.capsule_json(c), "team_id": ids.encode(ids.TEAM, c.team_id)}
                for c in await db.scalars(query)]


async def audited(state: AppState, who: Identity, ref: str, action: str, metadata: dict[str, Any],
                  operation: Awaitable[T]) -> T:
    """Run an admin operation on a capsule and write its audit entry (status ``error`` when it fails)."""
    try:
        result = await operation
    except ApiError as exc:
        await _record(state, who, ref, action, {**metadata, "error": exc.message[:500]}, "error")
        raise
    await _record(state, who, ref, action, metadata, "success")
    return result


async def _record(state: AppState, who: Identity, ref: str, action: str, metadata: dict[str, Any],
                  status: str) -> None:
    async with state.db() as db, db.begin():
        try:
            capsule = await capsules.load(db, None, ref)
        except ApiError:
            return  # no such capsule: nothing was done to anything
        await audit.record(db, who, capsule.team_id, "sandbox", ref, action, scope="admin", status=status,
                           metadata=metadata)
