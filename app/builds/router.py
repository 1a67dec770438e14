"""``/v1/admin/builds*`` (session + platform admin; control-plane.md §9.3): submit (202), list, get, cancel (204).

Additive query parameters: list ``?status=&limit=``; get ``?logs=false`` (omit the kept step output) and
``?tail=N`` (lines of log tail per step, default 20)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Query, Response

from app.auth.deps import PlatformAdmin, State
from app.builds import service
from app.builds.schemas import DEFAULT_TAIL_LINES
from app.core.http import ORJSONResponse

router = APIRouter(prefix="/v1/admin/builds", tags=["admin"])


@router.post("", status_code=202)
async def create_build(who: PlatformAdmin, state: State, body: Any = Body(None)) -> ORJSONResponse:  # noqa: B008
    return ORJSONResponse(await service.submit(state, who, body), status_code=202)


@router.get("")
async def list_builds(who: PlatformAdmin, state: State, status: str | None = Query(None, max_length=16),
                      limit: int = Query(service.LIST_LIMIT)) -> list[dict[str, Any]]:
    return await service.list_builds(state, status, limit)


@router.get("/{build_id}")
async def get_build(build_id: str, who: PlatformAdmin, state: State, logs: bool = Query(True),
                    tail: int = Query(DEFAULT_TAIL_LINES)) -> dict[str, Any]:
    return await service.get(state, build_id, logs=logs, tail_lines=tail)


@router.post("/{build_id}/cancel", status_code=204)
async def cancel_build(build_id: str, who: PlatformAdmin, state: State) -> Response:
    await service.cancel(state, who, build_id)
    return Response(status_code=204)
