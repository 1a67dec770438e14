"""``/v1/api-keys*`` (session only; any role)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import Field

from app.apikeys import service
from app.auth.deps import State, TeamSession
from app.core import ids
from app.core.http import ORJSONResponse
from app.core.schemas import Body

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"])


class CreateKeyRequest(Body):
    name: str | None = Field(default=None, max_length=200)


@router.post("", status_code=201)
async def create_key(who: TeamSession, state: State, body: CreateKeyRequest | None = None) -> ORJSONResponse:
    name = ((body.name if body else None) or "").strip() or "Unnamed API Key"
    assert who.team_id is not None
    return ORJSONResponse(await service.create(state, who, who.team_id, name), status_code=201)


@router.get("")
async def list_keys(who: TeamSession, state: State) -> list[dict[str, Any]]:
    assert who.team_id is not None
    return await service.list_for_team(state, who.team_id)


@router.delete("/{key_id}", status_code=204)
async def delete_key(key_id: str, who: TeamSession, state: State) -> Response:
    assert who.team_id is not None
    await service.delete_key(state, who, who.team_id, ids.decode(ids.API_KEY, key_id, "API key id"))
    return Response(status_code=204)
