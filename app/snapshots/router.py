"""``/v1/snapshots*`` (API key or session; control-plane.md §9.1–9.2)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response

from app.auth.deps import State, TeamCaller
from app.core.http import ORJSONResponse
from app.snapshots import service
from app.snapshots.schemas import CreateSnapshotRequest

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])


@router.post("", status_code=201)
async def create_snapshot(body: CreateSnapshotRequest, who: TeamCaller, state: State,
                          overwrite: bool = Query(False)) -> ORJSONResponse:
    template = await service.create(state, who, body.sandbox_id, body.name, overwrite=overwrite)
    return ORJSONResponse(template, status_code=201)


@router.get("")
async def list_snapshots(who: TeamCaller, state: State,
                         type_: str | None = Query(None, alias="type", max_length=16)) -> list[dict[str, Any]]:
    return await service.list_for(state, who, type_)


@router.delete("/{name}", status_code=204)
async def delete_snapshot(name: str, who: TeamCaller, state: State) -> Response:
    await service.delete(state, who, name)
    return Response(status_code=204)
