"""``/v1/capsules*`` (API key or session). Static paths (stats, usage) come before ``/{id}``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import Field

from app.auth.deps import State, TeamCaller
from app.auth.identity import Identity
from app.capsules import metrics, multipart, ops, service
from app.core.http import UPLOAD_LIMIT, ORJSONResponse
from app.core.schemas import Body
from app.core.state import AppState

router = APIRouter(prefix="/v1/capsules", tags=["capsules"])


class CreateCapsuleRequest(Body):
    template: str | None = Field(default=None, max_length=64)
    vcpus: int | None = Field(default=None, ge=-1_000_000, le=1024)
    memory_mb: int | None = Field(default=None, ge=-1_000_000, le=1 << 22)
    disk_size_mb: int | None = Field(default=None, ge=-1_000_000, le=1 << 22)
    timeout_sec: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1)
    metadata: dict[str, str] | None = None


class ExecRequest(Body):
    cmd: str = Field(max_length=65536)
    args: list[str] = Field(default_factory=list, max_length=10_000)
    timeout_sec: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1)
    background: bool = False
    tag: str = Field(default="", max_length=128)
    envs: dict[str, str] = Field(default_factory=dict)
    cwd: str = Field(default="", max_length=4096)


class PathRequest(Body):
    path: str = Field(max_length=4096)


class ListDirRequest(Body):
    path: str = Field(max_length=4096)
    depth: int = Field(default=1, ge=0, le=64)


# --- lifecycle ------------------------------------------------------------------------------


@router.post("", status_code=202)
async def create_capsule(who: TeamCaller, state: State, body: CreateCapsuleRequest | None = None) -> ORJSONResponse:
    spec = body.model_dump(exclude_none=True) if body else {}
    return ORJSONResponse(await service.create(state, who, spec), status_code=202)


@router.get("")
async def list_capsules(who: TeamCaller, state: State) -> list[dict[str, Any]]:
    return await service.list_for(state, who.team_id)


@router.get("/stats")
async def capsule_stats(who: TeamCaller, state: State, range_: str = Query("1h", alias="range", max_length=8)) -> Any:
    from app.capsules import usage

    return await usage.stats(state, who, range_)


@router.get("/usage")
async def capsule_usage(who: TeamCaller, state: State, from_: str | None = Query(None, alias="from", max_length=10),
                        to: str | None = Query(None, max_length=10)) -> Any:
    from app.capsules import usage

    return await usage.daily(state, who, from_, to)


@router.get("/{capsule_id}")
async def get_capsule(capsule_id: str, who: TeamCaller, state: State) -> dict[str, Any]:
    return await service.get(state, who, capsule_id)


@router.delete("/{capsule_id}", status_code=202)
async def destroy_capsule(capsule_id: str, who: TeamCaller, state: State) -> ORJSONResponse:
    return ORJSONResponse(await service.destroy(state, who, capsule_id), status_code=202)


@router.post("/{capsule_id}/pause", status_code=202)
async def pause_capsule(capsule_id: str, who: TeamCaller, state: State) -> ORJSONResponse:
    return ORJSONResponse(await service.pause(state, who, capsule_id), status_code=202)


@router.post("/{capsule_id}/resume", status_code=202)
async def resume_capsule(capsule_id: str, who: TeamCaller, state: State) -> ORJSONResponse:
    return ORJSONResponse(await service.resume(state, who, capsule_id), status_code=202)


@router.post("/{capsule_id}/ping", status_code=204)
async def ping_capsule(capsule_id: str, who: TeamCaller, state: State) -> Response:
    await service.ping(state, who, capsule_id)
    return Response(status_code=204)


@router.get("/{capsule_id}/metrics")
async def capsule_metrics(capsule_id: str, who: TeamCaller, state: State,
                          range_: str = Query("10m", alias="range", max_length=8)) -> dict[str, Any]:
    return await metrics.get_metrics(state, who, capsule_id, range_)


# --- exec and processes ---------------------------------------------------------------------


async def run_exec(state: AppState, who: Identity | None, capsule_id: str, body: ExecRequest) -> ORJSONResponse:
    if body.background:
        result = await ops.exec_background(state, who, capsule_id, body.cmd, body.args, body.tag, body.envs, body.cwd)
        return ORJSONResponse(result, status_code=202)
    result = await ops.exec_foreground(state, who, capsule_id, body.cmd, body.args, body.timeout_sec, body.envs,
                                       body.cwd)
    return ORJSONResponse(result)


@router.post("/{capsule_id}/exec")
async def exec_command(capsule_id: str, body: ExecRequest, who: TeamCaller, state: State) -> ORJSONResponse:
    return await run_exec(state, who, capsule_id, body)


@router.get("/{capsule_id}/processes")
async def list_processes(capsule_id: str, who: TeamCaller, state: State) -> dict[str, Any]:
    return await ops.list_processes(state, who, capsule_id)


@router.delete("/{capsule_id}/processes/{selector}", status_code=204)
async def kill_process(capsule_id: str, selector: str, who: TeamCaller, state: State,
                       signal: str = Query("SIGKILL", max_length=16)) -> Response:
    await ops.kill_process(state, who, capsule_id, selector, signal)
    return Response(status_code=204)


# --- files ----------------------------------------------------------------------------------


async def upload(state: AppState, who: Identity | None, capsule_id: str, request: Request) -> Response:
    path, content = await multipart.read_whole(request.stream(), request.headers.get("content-type"), UPLOAD_LIMIT)
    await ops.write_file(state, who, capsule_id, path, content)
    return Response(status_code=204)


async def upload_stream(state: AppState, who: Identity | None, capsule_id: str, request: Request) -> Response:
    await service.target(state, who, capsule_id)  # refuse early, before reading the body
    path, chunks = await multipart.open_streaming(request.stream(), request.headers.get("content-type"))
    await ops.write_stream(state, who, capsule_id, path, chunks)
    return Response(status_code=204)


async def download_stream(state: AppState, who: Identity | None, capsule_id: str, path: str) -> StreamingResponse:
    body = await ops.open_read_stream(state, who, capsule_id, path)
    return StreamingResponse(body, media_type="application/octet-stream")


@router.post("/{capsule_id}/files/write", status_code=204)
async def upload_file(capsule_id: str, request: Request, who: TeamCaller, state: State) -> Response:
    return await upload(state, who, capsule_id, request)


@router.post("/{capsule_id}/files/read")
async def download_file(capsule_id: str, body: PathRequest, who: TeamCaller, state: State) -> Response:
    content = await ops.read_file(state, who, capsule_id, body.path)
    return Response(content, media_type="application/octet-stream")


@router.post("/{capsule_id}/files/list")
async def list_dir(capsule_id: str, body: ListDirRequest, who: TeamCaller, state: State) -> dict[str, Any]:
    return await ops.list_dir(state, who, capsule_id, body.path, body.depth)


@router.post("/{capsule_id}/files/mkdir")
async def make_dir(capsule_id: str, body: PathRequest, who: TeamCaller, state: State) -> dict[str, Any]:
    return await ops.make_dir(state, who, capsule_id, body.path)


@router.post("/{capsule_id}/files/remove", status_code=204)
async def remove_path(capsule_id: str, body: PathRequest, who: TeamCaller, state: State) -> Response:
    await ops.remove(state, who, capsule_id, body.path)
    return Response(status_code=204)


@router.post("/{capsule_id}/files/stream/write", status_code=204)
async def stream_upload(capsule_id: str, request: Request, who: TeamCaller, state: State) -> Response:
    return await upload_stream(state, who, capsule_id, request)


@router.post("/{capsule_id}/files/stream/read")
async def stream_download(capsule_id: str, body: PathRequest, who: TeamCaller, state: State) -> StreamingResponse:
    return await download_stream(state, who, capsule_id, body.path)
