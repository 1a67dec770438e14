"""The one function that writes audit entries (control-plane.md §15)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditLog
from app.auth.identity import Identity
from app.core import clock, ids


async def record(
    db: AsyncSession,
    who: Identity | None,
    team_id: uuid.UUID | None,
    resource_type: str,
    resource_id: str | None,
    action: str,
    *,
    scope: str = "team",
    status: str = "success",
    metadata: dict[str, Any] | None = None,
) -> None:
    """Add an entry to the caller's transaction, so it commits (or not) with the change it describes."""
    db.add(
        AuditLog(
            id=ids.new_uuid(),
            team_id=team_id or ids.ZERO_UUID,
            actor_type=who.actor_type if who else "system",
            actor_id=who.actor_id if who else None,
            actor_name=who.actor_name if who else "system",
            resource_type=resource_type,
            resource_id=resource_id,
            action=action,
            scope=scope,
            status=status,
            ip_address=who.ip if who else "",
            metadata_=metadata or {},
            created_at=clock.now(),
        )
    )
