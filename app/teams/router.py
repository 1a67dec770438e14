"""``/v1/teams*``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from app.auth.deps import SessionUser, State
from app.core.http import ORJSONResponse
from app.teams import service
from app.teams.schemas import AddMemberRequest, RoleRequest, TeamNameRequest

router = APIRouter(prefix="/v1/teams", tags=["teams"])


@router.get("")
async def list_teams(who: SessionUser, state: State) -> list[dict[str, Any]]:
    return await service.list_teams(state, who)


@router.post("", status_code=201)
async def create_team(body: TeamNameRequest, who: SessionUser, state: State) -> ORJSONResponse:
    return ORJSONResponse(await service.create_team(state, who, body.name), status_code=201)


@router.get("/{team_id}")
async def get_team(team_id: str, who: SessionUser, state: State) -> dict[str, Any]:
    return await service.get_team(state, who, service.scoped_team(who, team_id))


@router.patch("/{team_id}", status_code=204)
async def rename_team(team_id: str, body: TeamNameRequest, who: SessionUser, state: State) -> Response:
    await service.rename_team(state, who, service.scoped_team(who, team_id), body.name)
    return Response(status_code=204)


@router.delete("/{team_id}", status_code=204)
async def delete_team(team_id: str, who: SessionUser, state: State) -> Response:
    await service.delete_team(state, who, service.scoped_team(who, team_id))
    return Response(status_code=204)


@router.get("/{team_id}/members")
async def list_members(team_id: str, who: SessionUser, state: State) -> list[dict[str, Any]]:
    return await service.list_members(state, who, service.scoped_team(who, team_id))


@router.post("/{team_id}/members", status_code=201)
async def add_member(team_id: str, body: AddMemberRequest, who: SessionUser, state: State) -> ORJSONResponse:
    member = await service.add_member(state, who, service.scoped_team(who, team_id), body.email)
    return ORJSONResponse(member, status_code=201)


@router.patch("/{team_id}/members/{user_id}", status_code=204)
async def set_role(team_id: str, user_id: str, body: RoleRequest, who: SessionUser, state: State) -> Response:
    await service.set_role(state, who, service.scoped_team(who, team_id), user_id, body.role)
    return Response(status_code=204)


@router.delete("/{team_id}/members/{user_id}", status_code=204)
async def remove_member(team_id: str, user_id: str, who: SessionUser, state: State) -> Response:
    await service.remove_member(state, who, service.scoped_team(who, team_id), user_id)
    return Response(status_code=204)


@router.post("/{team_id}/leave", status_code=204)
async def leave(team_id: str, who: SessionUser, state: State) -> Response:
    await service.leave(state, who, service.scoped_team(who, team_id))
    return Response(status_code=204)
