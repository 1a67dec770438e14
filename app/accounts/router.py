"""``/v1/me*`` and ``/v1/users/search``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response

from app.accounts import service
from app.accounts.schemas import (
    ChangePasswordRequest,
    DeleteAccountRequest,
    RenameRequest,
    ResetConfirmRequest,
    ResetRequest,
)
from app.auth import sessions
from app.auth.deps import SessionUser, State

router = APIRouter(tags=["account"])


@router.get("/v1/me")
async def get_me(who: SessionUser, state: State) -> dict[str, Any]:
    return await service.me(state, who)


@router.patch("/v1/me", status_code=204)
async def update_name(body: RenameRequest, who: SessionUser, state: State) -> Response:
    await service.rename(state, who, body.name)
    return Response(status_code=204)


@router.delete("/v1/me", status_code=204)
async def delete_account(body: DeleteAccountRequest, who: SessionUser, request: Request, state: State) -> Response:
    await service.delete_account(state, who, body.confirmation)
    response = Response(status_code=204)
    sessions.clear_session_cookies(response, state, request)
    return response


@router.post("/v1/me/password", status_code=204)
async def change_password(body: ChangePasswordRequest, who: SessionUser, request: Request, state: State) -> Response:
    await service.change_password(state, who, body.new_password, body.current_password, body.confirm_password)
    response = Response(status_code=204)
    sessions.clear_session_cookies(response, state, request)
    return response


@router.post("/v1/me/password/reset", status_code=204)
async def request_reset(body: ResetRequest, state: State) -> Response:
    await service.request_reset(state, body.email)
    return Response(status_code=204)


@router.post("/v1/me/password/reset/confirm", status_code=204)
async def confirm_reset(body: ResetConfirmRequest, state: State) -> Response:
    await service.confirm_reset(state, body.token, body.new_password)
    return Response(status_code=204)


@router.get("/v1/me/sessions")
async def list_sessions(who: SessionUser, state: State) -> dict[str, Any]:
    return {"sessions": await service.list_sessions(state, who)}


@router.delete("/v1/me/sessions/{session_id}", status_code=204)
async def revoke_session(session_id: str, who: SessionUser, request: Request, state: State) -> Response:
    was_current = await service.revoke_session(state, who, session_id)
    response = Response(status_code=204)
    if was_current:
        sessions.clear_session_cookies(response, state, request)
    return response


@router.get("/v1/users/search", tags=["users"])
async def search_users(who: SessionUser, state: State, email: str = Query("", max_length=254)) -> list[dict[str, str]]:
    return await service.search(state, email)
