"""``GET /v1/audit-logs`` (the caller's team) and ``GET /v1/admin/audit-logs`` (platform admin, all teams)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.audit import service
from app.auth.deps import PlatformAdmin, State, TeamSession
from app.core import ids

router = APIRouter(tags=["audit"])

Before = Annotated[str | None, Query()]
BeforeId = Annotated[str | None, Query()]
Limit = Annotated[int | None, Query()]
Filter = Annotated[list[str] | None, Query()]


@router.get("/v1/audit-logs")
async def list_audit_logs(
    who: TeamSession, state: State, before: Before = None, before_id: BeforeId = None, limit: Limit = None,
    resource_type: Filter = None, action: Filter = None,
) -> dict[str, Any]:
    """Members see team-scope entries; owners and admins also see admin-scope ones (§15.2)."""
    assert who.team_id is not None
    page = service.parse_page(before, before_id, limit, resource_type, action)
    scopes = ("team", "admin") if who.role in ("owner", "admin") else ("team",)
    return await service.list_entries(state, page, team_id=who.team_id, scopes=scopes)


@router.get("/v1/admin/audit-logs", tags=["admin"])
async def admin_list_audit_logs(
    who: PlatformAdmin, state: State, before: Before = None, before_id: BeforeId = None, limit: Limit = None,
    resource_type: Filter = None, action: Filter = None, team_id: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    """Every team's entries (the spec's "all teams"), both scopes; ``team_id`` narrows to one team."""
    page = service.parse_page(before, before_id, limit, resource_type, action)
    team = ids.decode(ids.TEAM, team_id, "team_id") if team_id else None
    return await service.list_entries(state, page, team_id=team)
