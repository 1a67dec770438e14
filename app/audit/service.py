"""The one function that writes audit entries (control-plane.md §15)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditLog
from app.auth.identity import Identity
from app.core import clock, ids
from app.core.errors import InvalidRequest
from app.core.state import AppState

log = logging.getLogger("wrenn.audit")


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


async def record_now(
    state: AppState,
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
    """Write an entry in its own transaction — for outcomes whose own transaction rolls back (a failed
    login) or that have none (a delivery failure). Fire-and-forget: an insert error is only logged."""
    try:
        async with state.db() as db, db.begin():
            await record(db, who, team_id, resource_type, resource_id, action, scope=scope, status=status,
                         metadata=metadata)
    except Exception:
        log.exception("audit entry %s/%s not written", resource_type, action)


# --- queries (§15.2) ---------------------------------------------------------------------------

MAX_LIMIT = 200
DEFAULT_LIMIT = 50


@dataclass
class Page:
    before: datetime | None = None
    before_id: uuid.UUID | None = None
    limit: int = DEFAULT_LIMIT
    resource_types: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)


def parse_page(
    before: str | None, before_id: str | None, limit: int | None,
    resource_type: list[str] | None = None, action: list[str] | None = None,
) -> Page:
    page = Page()
    if before:
        try:
            page.before = datetime.fromisoformat(before.replace(" ", "+"))
        except ValueError as exc:
            raise InvalidRequest("before: not an RFC 3339 timestamp") from exc
        if page.before.tzinfo is None:
            raise InvalidRequest("before: timestamp needs a time zone")
    if before_id:
        page.before_id = ids.try_decode(ids.AUDIT, before_id)
        if page.before_id is None:
            raise InvalidRequest("before_id: not an audit entry ID (log-…)")
        if page.before is None:
            raise InvalidRequest("before_id: needs before")
    if limit is not None:
        if limit < 1:
            raise InvalidRequest("limit: must be at least 1")
        page.limit = min(limit, MAX_LIMIT)
    page.resource_types = _split(resource_type)
    page.actions = _split(action)
    return page


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for raw in values or [] for v in raw.split(",") if v.strip()]


def entry_json(row: AuditLog) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ids.encode(ids.AUDIT, row.id),
        "team_id": ids.encode(ids.TEAM, row.team_id),
        "actor_type": row.actor_type,
        "resource_type": row.resource_type,
        "action": row.action,
        "scope": row.scope,
        # Spec enum on the wire (§22 row 9); the four-level value stays available as ``level``.
        "status": "failure" if row.status == "error" else "success",
        "level": row.status,
        "metadata": row.metadata_ or {},
        "ip_address": row.ip_address,
        "created_at": clock.iso(row.created_at),
    }
    for key in ("actor_id", "actor_name", "resource_id"):
        value = getattr(row, key)
        if value:
            body[key] = value
    return body


async def list_entries(
    state: AppState, page: Page, *, team_id: uuid.UUID | None, scopes: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Newest first; keyset cursor on (created_at, id), which stays exact while entries are added."""
    query = select(AuditLog)
    if team_id is not None:
        query = query.where(AuditLog.team_id == team_id)
    if scopes is not None:
        query = query.where(AuditLog.scope.in_(scopes))
    if page.resource_types:
        query = query.where(AuditLog.resource_type.in_(page.resource_types))
    if page.actions:
        query = query.where(AuditLog.action.in_(page.actions))
    if page.before is not None:
        if page.before_id is not None:
            query = query.where(tuple_(AuditLog.created_at, AuditLog.id) < tuple_(page.before, page.before_id))
        else:
            query = query.where(AuditLog.created_at < page.before)
    query = query.order_by(AuditLog.created_at.desc(), AuditLog.id.desc()).limit(page.limit + 1)
    async with state.db() as db:
        rows = list(await db.scalars(query))
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    cursor = None
    if more and rows:
        last = rows[-1]
        cursor = {"before": clock.iso(last.created_at), "before_id": ids.encode(ids.AUDIT, last.id)}
    return {"entries": [entry_json(r) for r in rows], "next_cursor": cursor}
