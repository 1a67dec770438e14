"""Compare-and-set status transitions: the only way capsule status changes (control-plane.md §6.2)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.capsules.models import Capsule
from app.core import clock

TERMINAL = ("stopped", "error")
ACTIVE = ("pending", "starting", "running", "missing")


async def cas(
    db: AsyncSession, capsule_id: uuid.UUID, expected: Iterable[str], new: str, **values: Any
) -> bool:
    """Set ``status = new`` only if it is currently one of ``expected``; True when this caller won."""
    result = await db.execute(
        update(Capsule)
        .where(Capsule.id == capsule_id, Capsule.status.in_(tuple(expected)))
        .values(status=new, last_updated=clock.now(), **values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
