"""Accounts: signup, activation, login, passwords, sessions, profile and deletion (control-plane.md §4)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from app.accounts.models import OAuthProvider, Session, User
from app.apikeys import service as apikeys
from app.audit import service as audit
from app.auth import ratelimit, sessions
from app.auth.identity import Identity
from app.core import clock, ids, validation
from app.core.errors import ApiError, Conflict, InvalidRequest, NotFound, Unauthorized
from app.core.redis import activation_key, password_reset_key
from app.core.security import hash_password, needs_rehash, sha256_hex, token_hex, verify_password
from app.core.state import AppState
from app.teams import service as teams
from app.teams.models import Membership, Team

ACTIVATION_TTL = 1800
RESET_TTL = 900
SIGNUP_COOLDOWN = timedelta(minutes=30)


@dataclass
class LoginResult:
    body: dict[str, Any]
    raw_sid: str
    csrf: str


def session_body(user: User, team_id: uuid.UUID | None, role: str) -> dict[str, Any]:
    return {
        "user_id": ids.encode(ids.USER, user.id),
        "team_id": ids.encode(ids.TEAM, team_id) if team_id else "",
        "email": user.email,
        "name": user.name,
        "role": role,
        "is_admin": user.is_admin,
    }


async def user_by_email(db: AsyncSession, email: str) -> User | None:
    return await db.scalar(select(User).where(User.email == email, User.status != "deleted"))


async def active_user(db: AsyncSession, user_id: uuid.UUID) -> User:
    user = await db.scalar(select(User).where(User.id == user_id, User.status != "deleted"))
    if user is None:
        raise NotFound("user not found")
    return user


# --- signup and activation -------------------------------------------------------------------


async def signup(state: AppState, email: str, password: str, name: str) -> None:
    email = validation.email(email)
    validation.password(password)
    name = validation.display_name(name)
    async with state.db() as db, db.begin():
        existing = await db.scalar(select(User).where(User.email == email))
        if existing is not None:
            if existing.status != "inactive":
                raise Conflict("an account with this email already exists", code="email_taken")
            if clock.now() - existing.created_at < SIGNUP_COOLDOWN:
                raise Conflict("signup already pending; check your email or retry later",
                               code="signup_cooldown")
            await db.delete(existing)
            await db.flush()
        user = User(id=ids.new_uuid(), email=email, password_hash=hash_password(password), name=name,
                    status="inactive", created_at=clock.now(), updated_at=clock.now())
        db.add(user)
    token = token_hex(16)
    await state.redis.set(activation_key(sha256_hex(token)), ids.encode(ids.USER, user.id), ex=ACTIVATION_TTL)
    link = f"{state.settings.frontend_url}/activate?token={token}"
    await state.mailer.send(email, "Activate your Wrenn account",
                            f"Hello {name},\n\nActivate your account (valid 30 minutes):\n{link}\n")


async def activate(state: AppState, token: str, conn: HTTPConnection) -> LoginResult:
    if not token or len(token) > 128:
        raise InvalidRequest("token: invalid or expired activation token", code="invalid_token")
    user_ref = await state.redis.getdel(activation_key(sha256_hex(token)))
    if not user_ref:
        raise InvalidRequest("invalid or expired activation token", code="invalid_token")
    user_id = ids.decode(ids.USER, str(user_ref))
    async with state.db() as db, db.begin():
        user = await db.get(User, user_id, with_for_update=True)
        if user is None or user.status == "deleted":
            raise InvalidRequest("invalid or expired activation token", code="invalid_token")
        if user.status != "inactive":
            raise InvalidRequest("account already activated", code="already_activated")
        user.status = "active"
        user.updated_at = clock.now()
        await db.flush()
        result = await _start_session(state, db, user, conn)
        await audit.record(db, _as_identity(user, conn), None, "user", ids.encode(ids.USER, user.id),
                           "activate")
    return result


# --- login -----------------------------------------------------------------------------------


async def login(state: AppState, email: str, password: str, conn: HTTPConnection) -> LoginResult:
    email = validation.normalize_email(email)
    ip = sessions.client_ip(conn)
    await ratelimit.check(state, email, ip)
    async with state.db() as db, db.begin():
        user = await user_by_email(db, email)
        ok = verify_password(user.password_hash if user else None, password)
        if user is None or not ok:
            await ratelimit.failed(state, email, ip)
            await _login_failed(state, user, email, ip, "bad_credentials")
            raise Unauthorized("invalid email or password")
        if user.status == "inactive":
            await _login_failed(state, user, email, ip, "not_activated")
            raise ApiError("account not activated; check your email", code="account_not_activated",
                           status=403)
        if user.status == "disabled":
            await _login_failed(state, user, email, ip, "disabled")
            raise ApiError("account disabled", code="account_disabled", status=403)
        assert user.password_hash is not None
        if needs_rehash(user.password_hash):
            user.password_hash = hash_password(password)
        result = await _start_session(state, db, user, conn)
        await audit.record(db, _as_identity(user, conn), _team_of(result), "session", None, "login")
    await ratelimit.succeeded(state, email)
    return result


async def _login_failed(state: AppState, user: User | None, email: str, ip: str, reason: str) -> None:
    """Failed logins go to the platform audit log (admin scope): the attempt may name no real account."""
    who = Identity(kind="session", team_id=None, user_id=user.id if user else None, email=email, ip=ip)
    await audit.record_now(state, who, None, "session", None, "login", scope="admin", status="error",
                           metadata={"email": email[:254], "reason": reason})


def _team_of(result: LoginResult) -> uuid.UUID | None:
    ref = result.body["team_id"]
    return ids.decode(ids.TEAM, ref) if ref else None


def _as_identity(user: User, conn: HTTPConnection) -> Identity:
    return Identity(kind="session", team_id=None, user_id=user.id, email=user.email, name=user.name,
                    ip=sessions.client_ip(conn))


async def _start_session(state: AppState, db: AsyncSession, user: User, conn: HTTPConnection) -> LoginResult:
    team_id, role = await teams.ensure_login_team(db, user)
    raw, csrf = await sessions.create_session(state, db, user, team_id, role, conn)
    return LoginResult(session_body(user, team_id, role), raw, csrf)


async def login_user_id(state: AppState, user_id: uuid.UUID, conn: HTTPConnection) -> LoginResult:
    """Start a session for an already-authenticated user (OAuth callback)."""
    async with state.db() as db, db.begin():
        user = await active_user(db, user_id)
        result = await _start_session(state, db, user, conn)
        await audit.record(db, _as_identity(user, conn), _team_of(result), "session", None, "login",
                           metadata={"method": "oauth"})
    return result


async def switch_team(state: AppState, who: Identity, team_ref: str, conn: HTTPConnection) -> LoginResult:
    team_id = ids.decode(ids.TEAM, team_ref, "team_id")
    async with state.db() as db, db.begin():
        team = await db.scalar(select(Team).where(Team.id == team_id, Team.deleted_at.is_(None)))
        if team is None:
            raise NotFound("team not found")
        membership = await db.scalar(
            select(Membership).where(Membership.team_id == team_id, Membership.user_id == who.user_id)
        )
        if membership is None:
            raise ApiError("not a member of this team", code="forbidden", status=403)
        user = await active_user(db, who.require_user())
        raw, csrf = await sessions.create_session(state, db, user, team_id, membership.role, conn)
        if who.session_hash:
            await db.execute(delete(Session).where(Session.id == who.session_hash))
    if who.session_hash:
        await sessions.revoke(state, who.session_hash)
    return LoginResult(session_body(user, team_id, membership.role), raw, csrf)


async def logout(state: AppState, who: Identity) -> None:
    if who.session_hash:
        await sessions.revoke(state, who.session_hash)
    await audit.record_now(state, who, who.team_id, "session", None, "logout")


async def logout_all(state: AppState, who: Identity) -> None:
    async with state.db() as db, db.begin():
        await sessions.revoke_all(state, db, who.require_user())
        await audit.record(db, who, who.team_id, "session", None, "logout_all")


# --- profile ---------------------------------------------------------------------------------


async def me(state: AppState, who: Identity) -> dict[str, Any]:
    async with state.db() as db:
        user = await active_user(db, who.require_user())
        providers = list(await db.scalars(
            select(OAuthProvider.provider).where(OAuthProvider.user_id == user.id).order_by(OAuthProvider.provider)
        ))
    return {"name": user.name, "email": user.email, "has_password": bool(user.password_hash),
            "providers": providers}


async def rename(state: AppState, who: Identity, name: str) -> None:
    name = validation.display_name(name)
    async with state.db() as db, db.begin():
        await db.execute(update(User).where(User.id == who.user_id).values(name=name, updated_at=clock.now()))
    await sessions.invalidate_user_cache(state, who.require_user())


async def delete_account(state: AppState, who: Identity, confirmation: str) -> None:
    async with state.db() as db, db.begin():
        user = await active_user(db, who.require_user())
        if confirmation.strip().lower() != user.email:
            raise InvalidRequest("confirmation: must match your email address")
        owned = list(await db.scalars(
            select(Membership.team_id).where(Membership.user_id == user.id, Membership.role == "owner")
        ))
        for team_id in owned:
            others = await db.scalar(
                select(func.count()).select_from(Membership)
                .where(Membership.team_id == team_id, Membership.user_id != user.id)
            )
            if others:
                raise Conflict("you own a team that has other members; delete or hand it over first",
                               code="owns_team_with_members")
        for team_id in owned:
            await teams.teardown(state, db, team_id)
        await apikeys.delete_where(state, db, apikeys.ApiKey.created_by == user.id)
        await db.execute(delete(Membership).where(Membership.user_id == user.id))
        user.status = "deleted"
        user.deleted_at = clock.now()
        await sessions.revoke_all(state, db, user.id)
        await audit.record(db, who, who.team_id, "user", ids.encode(ids.USER, user.id), "delete")
    await state.mailer.send(user.email, "Your Wrenn account is scheduled for deletion",
                            "Your account was deleted and will be permanently removed in 15 days.\n")


# --- passwords -------------------------------------------------------------------------------


async def change_password(
    state: AppState, who: Identity, new_password: str, current: str | None, confirm: str | None
) -> None:
    validation.password(new_password, "new_password")
    async with state.db() as db, db.begin():
        user = await active_user(db, who.require_user())
        if user.password_hash:
            if not current:
                raise InvalidRequest("current_password: field required")
            if not verify_password(user.password_hash, current):
                raise ApiError("current password is incorrect", code="wrong_password", status=401)
        elif confirm != new_password:
            raise InvalidRequest("confirm_password: must match new_password")
        user.password_hash = hash_password(new_password)
        user.updated_at = clock.now()
        await sessions.revoke_all(state, db, user.id)
        await audit.record(db, who, who.team_id, "user", ids.encode(ids.USER, user.id), "change_password")


async def request_reset(state: AppState, email: str) -> None:
    email = validation.normalize_email(email)
    async with state.db() as db:
        user = await user_by_email(db, email)
    if user is None or user.status != "active":
        return  # same answer either way: never reveal whether an account exists
    token = token_hex(16)
    await state.redis.set(password_reset_key(sha256_hex(token)), ids.encode(ids.USER, user.id), ex=RESET_TTL)
    link = f"{state.settings.frontend_url}/reset-password?token={token}"
    await state.mailer.send(email, "Reset your Wrenn password",
                            f"Reset your password (valid 15 minutes):\n{link}\n")


async def confirm_reset(state: AppState, token: str, new_password: str) -> None:
    if not token or len(token) > 128:
        raise InvalidRequest("token: invalid or expired reset token", code="invalid_token")
    validation.password(new_password, "new_password")
    user_ref = await state.redis.getdel(password_reset_key(sha256_hex(token)))
    if not user_ref:
        raise InvalidRequest("invalid or expired reset token", code="invalid_token")
    async with state.db() as db, db.begin():
        user = await db.get(User, ids.decode(ids.USER, str(user_ref)), with_for_update=True)
        if user is None or user.status == "deleted":
            raise InvalidRequest("invalid or expired reset token", code="invalid_token")
        user.password_hash = hash_password(new_password)
        user.updated_at = clock.now()
        await sessions.revoke_all(state, db, user.id)
        await audit.record(db, None, None, "user", ids.encode(ids.USER, user.id), "reset_password")


# --- sessions --------------------------------------------------------------------------------


async def list_sessions(state: AppState, who: Identity) -> list[dict[str, Any]]:
    now = clock.now()
    async with state.db() as db:
        rows = await db.scalars(
            select(Session)
            .where(Session.user_id == who.user_id, Session.expires_at > now,
                   Session.last_seen_at > now - sessions.IDLE)
            .order_by(Session.last_seen_at.desc())
        )
        return [
            {
                "id": row.id,
                "user_agent": row.user_agent,
                "ip_address": row.ip_address,
                "created_at": clock.iso(row.created_at),
                "last_seen_at": clock.iso(row.last_seen_at),
                "expires_at": clock.iso(row.expires_at),
                "current": row.id == who.session_hash,
            }
            for row in rows
        ]


async def revoke_session(state: AppState, who: Identity, session_id: str) -> bool:
    """Revoke one of the caller's sessions; returns True when it was the current one."""
    async with state.db() as db:
        owner = await db.scalar(select(Session.user_id).where(Session.id == session_id))
    if owner != who.user_id:
        return False  # silently ignore other users' (or unknown) sessions
    await sessions.revoke(state, session_id)
    await audit.record_now(state, who, who.team_id, "session", None, "revoke")
    return session_id == who.session_hash


# --- search ----------------------------------------------------------------------------------


async def search(state: AppState, prefix: str) -> list[dict[str, str]]:
    prefix = prefix.strip().lower()
    if len(prefix) < 3 or "@" not in prefix:
        raise InvalidRequest("email: prefix must be at least 3 characters and contain '@'")
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    async with state.db() as db:
        rows = await db.execute(
            select(User.id, User.email)
            .where(User.email.like(escaped + "%", escape="\\"), User.status == "active")
            .order_by(User.email)
            .limit(10)
        )
        return [{"user_id": ids.encode(ids.USER, uid), "email": email} for uid, email in rows.all()]


async def create_admin(state: AppState, email: str, password: str, name: str) -> tuple[uuid.UUID, uuid.UUID]:
    """Create an active platform admin with a default team (bootstrap and ``wrenn-cp create-admin``)."""
    email = validation.email(email)
    validation.password(password)
    async with state.db() as db, db.begin():
        if await user_by_email(db, email) is not None:
            raise Conflict("an account with this email already exists", code="email_taken")
        now = clock.now()
        user = User(id=ids.new_uuid(), email=email, password_hash=hash_password(password),
                    name=validation.display_name(name), status="active", is_admin=True,
                    created_at=now, updated_at=now)
        db.add(user)
        await db.flush()
        team_id, _ = await teams.ensure_login_team(db, user)
        user.is_admin = True
    return user.id, team_id
