"""``/v1/auth/*``: signup, activation, login, logout, team switching."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.accounts import service
from app.accounts.schemas import LoginRequest, SignupRequest, SwitchTeamRequest, TokenRequest
from app.auth import sessions
from app.auth.deps import SessionUser, State
from app.core.http import ORJSONResponse

router = APIRouter(prefix="/v1/auth", tags=["auth"])


def session_response(request: Request, state: State, result: service.LoginResult) -> ORJSONResponse:
    response = ORJSONResponse(result.body)
    sessions.set_session_cookies(response, state, request, result.raw_sid, result.csrf)
    return response


@router.post("/signup", status_code=201)
async def signup(body: SignupRequest, state: State) -> ORJSONResponse:
    await service.signup(state, body.email, body.password, body.name)
    return ORJSONResponse(
        {"message": "Account created. Check your email for an activation link."}, status_code=201
    )


@router.post("/activate")
async def activate(body: TokenRequest, request: Request, state: State) -> ORJSONResponse:
    return session_response(request, state, await service.activate(state, body.token, request))


@router.post("/login")
async def login(body: LoginRequest, request: Request, state: State) -> ORJSONResponse:
    return session_response(request, state, await service.login(state, body.email, body.password, request))


@router.post("/logout", status_code=204)
async def logout(who: SessionUser, request: Request, state: State) -> Response:
    await service.logout(state, who)
    response = Response(status_code=204)
    sessions.clear_session_cookies(response, state, request)
    return response


@router.post("/logout-all", status_code=204)
async def logout_all(who: SessionUser, request: Request, state: State) -> Response:
    await service.logout_all(state, who)
    response = Response(status_code=204)
    sessions.clear_session_cookies(response, state, request)
    return response


@router.post("/switch-team")
async def switch_team(body: SwitchTeamRequest, who: SessionUser, request: Request, state: State) -> ORJSONResponse:
    return session_response(request, state, await service.switch_team(state, who, body.team_id, request))
