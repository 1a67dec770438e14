"""``/v1/hosts*``. Agent-facing routes (register, refresh, sandbox-events) come before ``/{id}``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from pydantic import Field

from app.auth.deps import SessionUserFresh, State
from app.core.http import ORJSONResponse
from app.core.schemas import Body
from app.hosts import sandbox_events, service
from app.hosts.tokens import HostCaller

router = APIRouter(prefix="/v1/hosts", tags=["hosts"])


class CreateHostRequest(Body):
    type: str = Field(max_length=16)
    team_id: str | None = Field(default=None, max_length=64)
    provider: str = Field(default="", max_length=200)
    availability_zone: str = Field(default="", max_length=200)


class RegisterRequest(Body):
    token: str = Field(default="", max_length=256)
    arch: str = Field(default="", max_length=32)
    cpu_cores: int = Field(default=0, ge=0, le=1_000_000)
    memory_mb: int = Field(default=0, ge=0, le=1 << 40)
    disk_gb: int = Field(default=0, ge=0, le=1 << 30)
    address: str = Field(default="", max_length=300)


class RefreshRequest(Body):
    refresh_token: str = Field(max_length=256)


class SandboxEvent(Body):
    event: str = Field(default="", max_length=100)
    sandbox_id: str = Field(default="", max_length=64)
    host_id: str = Field(default="", max_length=64)
    timestamp: int = 0
    host_ip: str = Field(default="", max_length=64)
    error: str = Field(default="", max_length=10_000)


class TagRequest(Body):
    tag: str = Field(max_length=200)


@router.post("/register", status_code=201)
async def register(body: RegisterRequest, state: State) -> ORJSONResponse:
    spec = body.model_dump(exclude={"token"})
    return ORJSONResponse(await service.register(state, body.token, spec), status_code=201)


@router.post("/auth/refresh")
async def refresh(body: RefreshRequest, state: State) -> dict[str, Any]:
    return await service.refresh(state, body.refresh_token)


@router.post("/sandbox-events", status_code=204)
async def sandbox_event(body: SandboxEvent, caller: HostCaller, state: State) -> Response:
    await sandbox_events.accept(state, caller, body.model_dump())
    return Response(status_code=204)


@router.post("", status_code=201)
async def create_host(body: CreateHostRequest, who: SessionUserFresh, state: State) -> ORJSONResponse:
    result = await service.create(state, who, body.type, body.team_id, body.provider, body.availability_zone)
    return ORJSONResponse(result, status_code=201)


@router.get("")
async def list_hosts(who: SessionUserFresh, state: State) -> list[dict[str, Any]]:
    return await service.list_hosts(state, who)


@router.get("/{host_id}")
async def get_host(host_id: str, who: SessionUserFresh, state: State) -> dict[str, Any]:
    return await service.get_host(state, who, host_id)


@router.delete("/{host_id}", status_code=204)
async def delete_host(host_id: str, who: SessionUserFresh, state: State, force: bool = Query(False)) -> Response:
    await service.delete_host(state, who, host_id, force)
    return Response(status_code=204)


@router.get("/{host_id}/delete-preview")
async def delete_preview(host_id: str, who: SessionUserFresh, state: State) -> dict[str, Any]:
    return await service.delete_preview(state, who, host_id)


@router.post("/{host_id}/token", status_code=201)
async def regenerate_token(host_id: str, who: SessionUserFresh, state: State) -> ORJSONResponse:
    return ORJSONResponse(await service.regenerate_token(state, who, host_id), status_code=201)


@router.post("/{host_id}/heartbeat", status_code=204)
async def heartbeat(host_id: str, caller: HostCaller, state: State) -> Response:
    came_back = await service.heartbeat(state, caller, host_id)
    if came_back:
        from app.hosts import monitor

        monitor.reconcile_soon(state, caller)
    return Response(status_code=204)


@router.get("/{host_id}/tags")
async def list_tags(host_id: str, who: SessionUserFresh, state: State) -> list[str]:
    return await service.list_tags(state, who, host_id)


@router.post("/{host_id}/tags", status_code=204)
async def add_tag(host_id: str, body: TagRequest, who: SessionUserFresh, state: State) -> Response:
    await service.add_tag(state, who, host_id, body.tag)
    return Response(status_code=204)


@router.delete("/{host_id}/tags/{tag}", status_code=204)
async def remove_tag(host_id: str, tag: str, who: SessionUserFresh, state: State) -> Response:
    await service.remove_tag(state, who, host_id, tag)
    return Response(status_code=204)
