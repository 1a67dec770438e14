"""HTTP sessions: opaque IDs hashed at rest, cached in Redis, revocable at once (control-plane.md §4.2)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection
from starlette.responses import Response

from app.accounts.models import Session, User
from app.auth.identity import Identity
from app.core import clock
from app.core.redis import session_key, user_sessions_key
from app.core.security import sha256_hex, token_hex
from app.core.state import AppState
from app.teams.models import Membership

log = logging.getLogger("wrenn.sessions")

IDLE = timedelta(hours=6)
ABSOLUTE = timedelta(hours=24)
LAST_SEEN_WRITE_EVERY = timedelta(minutes=1)
SID_COOKIE = "wrenn_sid"
CSRF_COOKIE = "wrenn_csrf"


def client_ip(conn: HTTPConnection) -> str:
    """The peer address. X-Forwarded-For is honoured by uvicorn only from trusted proxies
    (WRENN_TRUSTED_PROXIES), so a client cannot pick its own IP to dodge throttling."""
    return conn.client.host if conn.client else ""


async def create_session(
    state: AppState,
    db: AsyncSession,
    user: User,
    team_id: uuid.UUID | None,
    role: str,
    conn: HTTPConnection,
) -> tuple[str, str]:
    """Insert a session row inside the caller's transaction; returns (raw sid, csrf token)."""
    raw, csrf = token_hex(32), token_hex(32)
    now = clock.now()
    row = Session(
        id=sha256_hex(raw),
        user_id=user.id,
        team_id=team_id,
        csrf_token=csrf,
        user_agent=(conn.headers.get("user-agent") or "")[:512],
        ip_address=client_ip(conn),
        created_at=now,
        last_seen_at=now,
        expires_at=now + ABSOLUTE,
    )
    db.add(row)
    await db.flush()
    await _cache(state, row, user, role)
    return raw, csrf


def _cache_payload(row: Session, user: User, role: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "user_id": str(row.user_id),
        "team_id": str(row.team_id) if row.team_id else None,
        "csrf": row.csrf_token,
        "email": user.email,
        "name": user.name,
        "role": role,
        "is_admin": user.is_admin,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "last_seen_at": row.last_seen_at.isoformat(),
        "user_agent": row.user_agent,
        "ip": row.ip_address,
    }


async def _cache(state: AppState, row: Session, user: User, role: str) -> None:
    ttl = _ttl(row.expires_at)
    if ttl <= 0:
        return
    payload = orjson.dumps(_cache_payload(row, user, role))
    async with state.redis.pipeline(transaction=False) as pipe:
        pipe.set(session_key(row.id), payload, ex=ttl)
        pipe.sadd(user_sessions_key(str(row.user_id)), row.id)
        pipe.expire(user_sessions_key(str(row.user_id)), int(ABSOLUTE.total_seconds()))
        await pipe.execute()


def _ttl(expires_at: datetime) -> int:
    remaining = (expires_at - clock.now()).total_seconds()
    return int(min(IDLE.total_seconds(), remaining))


def _identity(data: dict[str, Any], conn: HTTPConnection) -> Identity:
    return Identity(
        kind="session",
        team_id=uuid.UUID(data["team_id"]) if data.get("team_id") else None,
        user_id=uuid.UUID(data["user_id"]),
        email=data["email"],
        name=data["name"],
        role=data["role"],
        is_admin=bool(data["is_admin"]),
        session_hash=data["id"],
        csrf=data["csrf"],
        ip=client_ip(conn),
        user_agent=conn.headers.get("user-agent", ""),
    )


async def load_session(state: AppState, raw: str, conn: HTTPConnection) -> Identity | None:
    """Resolve a cookie value to an identity, or None when it is unknown, expired or revoked."""
    if not raw or len(raw) > 128:
        return None
    digest = sha256_hex(raw)
    cached = await state.redis.get(session_key(digest))
    if cached:
        data = orjson.loads(cached)
        if datetime.fromisoformat(data["expires_at"]) <= clock.now():
            await revoke(state, digest)
            return None
        await _touch(state, digest, data)
        return _identity(data, conn)
    return await _load_from_db(state, digest, conn)


async def _touch(state: AppState, digest: str, data: dict[str, Any]) -> None:
    """Slide the idle window; persist last_seen_at at most once a minute."""
    expires_at = datetime.fromisoformat(data["expires_at"])
    last_seen = datetime.fromisoformat(data["last_seen_at"])
    now = clock.now()
    if now - last_seen < LAST_SEEN_WRITE_EVERY:
        await state.redis.expire(session_key(digest), max(1, _ttl(expires_at)))
        return
    data["last_seen_at"] = now.isoformat()
    await state.redis.set(session_key(digest), orjson.dumps(data), ex=max(1, _ttl(expires_at)))
    task = asyncio.create_task(_write_last_seen(state, digest, now))
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Task[None]] = set()


async def _write_last_seen(state: AppState, digest: str, when: datetime) -> None:
    try:
        async with state.db() as db, db.begin():
            await db.execute(update(Session).where(Session.id == digest).values(last_seen_at=when))
    except Exception:  # a lost timestamp write must never surface to a request
        log.exception("could not persist last_seen_at")


async def _load_from_db(state: AppState, digest: str, conn: HTTPConnection) -> Identity | None:
    now = clock.now()
    async with state.db() as db, db.begin():
        row = await db.get(Session, digest)
        if row is None:
            return None
        if row.expires_at <= now or now - row.last_seen_at > IDLE:
            await db.delete(row)
            return None
        user = await db.get(User, row.user_id)
        if user is None or user.status != "active":
            return None
        role = ""
        if row.team_id is not None:
            membership = await db.scalar(
                select(Membership).where(Membership.team_id == row.team_id, Membership.user_id == user.id)
            )
            if membership is None:
                row.team_id = None  # removed from the team since: keep the session, drop the team
            else:
                role = membership.role
        row.last_seen_at = now
    await _cache(state, row, user, role)
    return _identity(_cache_payload(row, user, role), conn)


async def revoke(state: AppState, digest: str) -> None:
    async with state.db() as db, db.begin():
        await db.execute(delete(Session).where(Session.id == digest))
    await state.redis.delete(session_key(digest))


async def revoke_all(state: AppState, db: AsyncSession, user_id: uuid.UUID) -> None:
    """Delete every session of a user (inside the caller's transaction) and drop their caches."""
    hashes = list(await db.scalars(select(Session.id).where(Session.user_id == user_id)))
    await db.execute(delete(Session).where(Session.user_id == user_id))
    await _drop_caches(state, user_id, hashes)


async def invalidate_user_cache(state: AppState, user_id: uuid.UUID) -> None:
    """Force the next request of each of the user's sessions to rebuild from the database."""
    await _drop_caches(state, user_id, [])


async def _drop_caches(state: AppState, user_id: uuid.UUID, hashes: list[str]) -> None:
    members = await state.redis.smembers(user_sessions_key(str(user_id)))
    keys = {session_key(str(h)) for h in (*hashes, *members)}
    if keys:
        await state.redis.delete(*keys)
    await state.redis.delete(user_sessions_key(str(user_id)))


def _secure(state: AppState, conn: HTTPConnection) -> bool:
    mode = state.settings.cookie_secure
    if mode != "auto":
        return mode == "true"
    if state.settings.public_url.startswith("https://"):
        return True
    return conn.url.scheme == "https" or conn.headers.get("x-forwarded-proto", "").lower() == "https"


def set_session_cookies(
    response: Response, state: AppState, conn: HTTPConnection, raw: str, csrf: str
) -> None:
    secure = _secure(state, conn)
    max_age = int(ABSOLUTE.total_seconds())
    response.set_cookie(SID_COOKIE, raw, max_age=max_age, path="/", httponly=True, samesite="strict",
                        secure=secure)
    response.set_cookie(CSRF_COOKIE, csrf, max_age=max_age, path="/", httponly=False, samesite="strict",
                        secure=secure)


def clear_session_cookies(response: Response, state: AppState, conn: HTTPConnection) -> None:
    secure = _secure(state, conn)
    for name, http_only in ((SID_COOKIE, True), (CSRF_COOKIE, False)):
        response.set_cookie(name, "", max_age=-1, path="/", httponly=http_only, samesite="strict",
                            secure=secure)


async def purge_expired(state: AppState) -> int:
    """The 15-minute cleaner: drop rows past their absolute or idle lifetime."""
    now = clock.now()
    async with state.db() as db, db.begin():
        result = await db.execute(
            delete(Session).where((Session.expires_at < now) | (Session.last_seen_at < now - IDLE))
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
