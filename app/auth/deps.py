"""FastAPI dependencies for the route classes of control-plane.md §4.4.

- ``SessionUser``: cookie session (+ CSRF on unsafe methods).
- ``TeamSession``: cookie session bound to a team.
- ``TeamCaller``: ``X-API-Key`` (the only credential considered when present) or a team session.
- ``PlatformAdmin``: cookie session whose user is an admin *now* (re-read from the database).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from starlette.requests import HTTPConnection

from app.accounts.models import User
from app.apikeys import service as apikeys
from app.auth import sessions
from app.auth.identity import Identity
from app.core.errors import ApiError, Forbidden, Unauthorized
from app.core.security import constant_equal
from app.core.state import AppState, get_state

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

State = Annotated[AppState, Depends(get_state)]


class SessionExpired(Unauthorized):
    """401 that also clears the stale cookies (handled in app.main)."""


async def _session(conn: HTTPConnection, state: AppState) -> Identity:
    raw = conn.cookies.get(sessions.SID_COOKIE)
    if not raw:
        raise Unauthorized("authentication required")
    who = await sessions.load_session(state, raw, conn)
    if who is None:
        raise SessionExpired("session expired or revoked")
    return who


def _check_csrf(conn: HTTPConnection, who: Identity) -> None:
    method = conn.scope.get("method", "GET")
    if conn.scope["type"] != "http" or method in SAFE_METHODS:
        return
    header = conn.headers.get("x-csrf-token", "")
    cookie = conn.cookies.get(sessions.CSRF_COOKIE, "")
    if not header or not cookie or not constant_equal(header, cookie) or not constant_equal(cookie, who.csrf):
        raise Forbidden("CSRF token missing or invalid")


async def session_user(request: Request, state: State) -> Identity:
    who = await _session(request, state)
    _check_csrf(request, who)
    return who


def _with_team(who: Identity) -> Identity:
    if who.team_id is None:
        raise ApiError("no active team; switch to a team first", code="no_team", status=403)
    return who


async def team_session(who: Annotated[Identity, Depends(session_user)]) -> Identity:
    return _with_team(who)


async def team_caller(conn: HTTPConnection) -> Identity:
    """API key or session. Works for HTTP and WebSocket routes (no CSRF on WebSocket GETs)."""
    state = get_state(conn)
    raw_key = conn.headers.get("x-api-key")
    if raw_key is not None:
        who = await apikeys.authenticate(state, raw_key.strip())
        if who is None:
            raise Unauthorized("invalid API key")
        who.ip = sessions.client_ip(conn)  # for the audit log
        return who
    who = await _session(conn, state)
    _check_csrf(conn, who)
    return _with_team(who)


async def _admin_now(state: AppState, who: Identity) -> bool:
    """The admin flag as the database has it now (the session's copy is only a UI hint)."""
    async with state.db() as db:
        return bool(await db.scalar(select(User.is_admin).where(User.id == who.user_id)))


async def require_platform_admin(state: AppState, who: Identity) -> Identity:
    """Refuse a session whose user is not a platform admin right now; works for HTTP and WebSocket."""
    if not await _admin_now(state, who):
        raise Forbidden("platform admin required")
    who.is_admin = True
    return who


async def session_identity(conn: HTTPConnection) -> Identity:
    """The cookie session of an HTTP request or WebSocket upgrade (no CSRF check)."""
    return await _session(conn, get_state(conn))


async def platform_admin(who: Annotated[Identity, Depends(session_user)], state: State) -> Identity:
    return await require_platform_admin(state, who)


async def session_user_fresh(who: Annotated[Identity, Depends(session_user)], state: State) -> Identity:
    """A session whose admin flag is re-read from the database (the cached one is only a UI hint)."""
    who.is_admin = await _admin_now(state, who)
    return who


SessionUser = Annotated[Identity, Depends(session_user)]
SessionUserFresh = Annotated[Identity, Depends(session_user_fresh)]
TeamSession = Annotated[Identity, Depends(team_session)]
TeamCaller = Annotated[Identity, Depends(team_caller)]
PlatformAdmin = Annotated[Identity, Depends(platform_admin)]
