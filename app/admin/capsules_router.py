"""``/v1/admin/capsules*`` (session + platform admin): capsules of **all** teams (§22 row 13).
Creation has no team field, so it creates in the platform team. WebSocket variants live elsewhere."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response

from app.admin import capsules_service as admin_capsules
from app.auth.deps import PlatformAdmin, State
from app.capsules import metrics, ops
from app.capsules import service as capsules
from app.capsules.router import (
    CreateCapsuleRequest,
    ExecRequest,
    ListDirRequest,
    PathRequest,
    run_exec,
    upload,
)
from app.core import ids
from app.core.http import ORJSONResponse
from app.snapshots import service as snapshots
from app.snapshots.schemas import AdminSnapshotRequest

router = APIRouter(prefix="/v1/admin/capsules", tags=["admin"])


@router.post("", status_code=201)
async def create_capsule(who: PlatformAdmin, state: State, body: CreateCapsuleRequest | None = None) -> ORJSONResponse:
    spec = body.model_dump(exclude_none=True) if body else {}
    capsule = await capsules.create(state, who, spec, team_id=ids.ZERO_UUID, scope="admin")
    return ORJSONResponse({**capsule, "team_id": ids.encode(ids.TEAM, ids.ZERO_UUID)}, status_code=201)


@router.get("")
async def list_capsules(who: PlatformAdmin, state: State) -> list[dict[str, Any]]:
    return await admin_capsules.list_all(state)


@router.get("/{capsule_id}")
async def get_capsule(capsule_id: str, who: PlatformAdmin, state: State) -> dict[str, Any]:
    return await admin_capsules.with_team(state, await capsules.get(state, None, capsule_id))


@router.delete("/{capsule_id}", status_code=204)
async def destroy_capsule(capsule_id: str, who: PlatformAdmin, state: State) -> Response:
    await capsules.destroy(state, None, capsule_id, actor=who, scope="admin")
    return Response(status_code=204)


@router.post("/{capsule_id}/snapshot", status_code=201)
async def snapshot_capsule(capsule_id: str, body: AdminSnapshotRequest, who: PlatformAdmin,
                           state: State) -> ORJSONResponse:
    template = await snapshots.create(state, who, capsule_id, body.name, platform=True)
    return ORJSONResponse(template, status_code=201)


@router.post("/{capsule_id}/exec")
async def exec_command(capsule_id: str, body: ExecRequest, who: PlatformAdmin, state: State) -> ORJSONResponse:
    return await admin_capsules.audited(
        state, who, capsule_id, "exec", {"cmd": body.cmd, "background": body.background},
        run_exec(state, None, capsule_id, body))


@router.get("/{capsule_id}/metrics")
async def capsule_metrics(capsule_id: str, who: PlatformAdmin, state: State,
                          range_: str = Query("10m", alias="range", max_length=8)) -> dict[str, Any]:
    return await metrics.get_metrics(state, None, capsule_id, range_)


@router.get("/{capsule_id}/processes")
async def list_processes(capsule_id: str, who: PlatformAdmin, state: State) -> dict[str, Any]:
    return await ops.list_processes(state, None, capsule_id)


@router.delete("/{capsule_id}/processes/{selector}", status_code=204)
async def kill_process(capsule_id: str, selector: str, who: PlatformAdmin, state: State,
                       signal: str = Query("SIGKILL", max_length=16)) -> Response:
    await admin_capsules.audited(state, who, capsule_id, "kill_process", {"selector": selector, "signal": signal},
                                 ops.kill_process(state, None, capsule_id, selector, signal))
    return Response(status_code=204)


@router.post("/{capsule_id}/files/write", status_code=204)
async def upload_file(capsule_id: str, request: Request, who: PlatformAdmin, state: State) -> Response:
    return await admin_capsules.audited(state, who, capsule_id, "file_write", {},
                                        upload(state, None, capsule_id, request))


@router.post("/{capsule_id}/files/read")
async def download_file(capsule_id: str, body: PathRequest, who: PlatformAdmin, state: State) -> Response:
    content = await ops.read_file(state, None, capsule_id, body.path)
    return Response(content, media_type="application/octet-stream")


@router.post("/{capsule_id}/files/list")
async def list_dir(capsule_id: str, body: ListDirRequest, who: PlatformAdmin, state: State) -> dict[str, Any]:
    return await ops.list_dir(state, None, capsule_id, body.path, body.depth)


@router.post("/{capsule_id}/files/mkdir")
async def make_dir(capsule_id: str, body: PathRequest, who: PlatformAdmin, state: State) -> dict[str, Any]:
    return await admin_capsules.audited(state, who, capsule_id, "mkdir", {"path": body.path},
                                        ops.make_dir(state, None, capsule_id, body.path))


@router.post("/{capsule_id}/files/remove", status_code=204)
async def remove_path(capsule_id: str, body: PathRequest, who: PlatformAdmin, state: State) -> Response:
    await admin_capsules.audited(state, who, capsule_id, "remove", {"path": body.path},
                                 ops.remove(state, None, capsule_id, body.path))
    return Response(status_code=204)
