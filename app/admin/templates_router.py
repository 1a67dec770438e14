"""``/v1/admin/templates*`` (session + platform admin; control-plane.md §5.4)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from app.auth.deps import PlatformAdmin, State
from app.snapshots import service

router = APIRouter(prefix="/v1/admin/templates", tags=["admin"])


@router.get("")
async def list_templates(who: PlatformAdmin, state: State) -> list[dict[str, Any]]:
    return await service.admin_list(state)


@router.delete("/{name}", status_code=204)
async def delete_template(name: str, who: PlatformAdmin, state: State) -> Response:
    await service.admin_delete(state, who, name)
    return Response(status_code=204)
