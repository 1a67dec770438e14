"""``/v1/channels*`` (session; any role of the team)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from app.auth.deps import State, TeamSession
from app.channels import service
from app.channels.schemas import CreateChannelRequest, RotateConfigRequest, TestChannelRequest, UpdateChannelRequest
from app.core.http import ORJSONResponse

router = APIRouter(prefix="/v1/channels", tags=["channels"])


@router.post("/test")
async def test_channel(body: TestChannelRequest, who: TeamSession, state: State) -> dict[str, str]:
    return await service.test(state, who, body.provider, body.config)


@router.post("", status_code=201)
async def create_channel(body: CreateChannelRequest, who: TeamSession, state: State) -> ORJSONResponse:
    assert who.team_id is not None
    created = await service.create(state, who, who.team_id, body.name, body.provider, body.config, body.events)
    return ORJSONResponse(created, status_code=201)


@router.get("")
async def list_channels(who: TeamSession, state: State) -> list[dict[str, Any]]:
    assert who.team_id is not None
    return await service.list_channels(state, who.team_id)


@router.get("/{channel_id}")
async def get_channel(channel_id: str, who: TeamSession, state: State) -> dict[str, Any]:
    assert who.team_id is not None
    return await service.get(state, who.team_id, channel_id)


@router.patch("/{channel_id}")
async def update_channel(channel_id: str, body: UpdateChannelRequest, who: TeamSession, state: State) -> dict[str, Any]:
    assert who.team_id is not None
    return await service.update(state, who, who.team_id, channel_id, body.name, body.events)


@router.put("/{channel_id}/config")
async def rotate_config(channel_id: str, body: RotateConfigRequest, who: TeamSession, state: State) -> dict[str, Any]:
    assert who.team_id is not None
    return await service.rotate_config(state, who, who.team_id, channel_id, body.config)


@router.delete("/{channel_id}", status_code=204)
async def delete_channel(channel_id: str, who: TeamSession, state: State) -> Response:
    assert who.team_id is not None
    await service.delete(state, who, who.team_id, channel_id)
    return Response(status_code=204)
