"""``/v1/admin/users*`` and ``/v1/admin/teams*``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response

from app.admin import service
from app.auth.deps import PlatformAdmin, State
from app.core.schemas import Body

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class ActiveRequest(Body):
    active: bool


class AdminRequest(Body):
    admin: bool


class ByocRequest(Body):
    byoc: bool


@router.get("/users")
async def list_users(
    who: PlatformAdmin, state: State, page: int | None = Query(None, ge=1, le=100000),
    per_page: int = Query(100, ge=1, le=500),
) -> list[dict[str, Any]]:
    return await service.list_users(state, page, per_page)


@router.put("/users/{user_id}/active", status_code=204)
async def set_active(user_id: str, body: ActiveRequest, who: PlatformAdmin, state: State) -> Response:
    await service.set_active(state, who, user_id, body.active)
    return Response(status_code=204)


@router.put("/users/{user_id}/admin", status_code=204)
async def set_admin(user_id: str, body: AdminRequest, who: PlatformAdmin, state: State) -> Response:
    await service.set_admin(state, who, user_id, body.admin)
    return Response(status_code=204)


@router.get("/teams")
async def list_teams(
    who: PlatformAdmin, state: State, page: int | None = Query(None, ge=1, le=100000),
    per_page: int = Query(100, ge=1, le=500),
) -> list[dict[str, Any]]:
    return await service.list_teams(state, page, per_page)


@router.put("/teams/{team_id}/byoc", status_code=204)
async def set_byoc(team_id: str, body: ByocRequest, who: PlatformAdmin, state: State) -> Response:
    await service.set_byoc(state, who, team_id, body.byoc)
    return Response(status_code=204)


@router.delete("/teams/{team_id}", status_code=204)
async def delete_team(team_id: str, who: PlatformAdmin, state: State) -> Response:
    await service.delete_team(state, who, team_id)
    return Response(status_code=204)
