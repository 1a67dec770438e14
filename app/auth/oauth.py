"""GitHub OAuth: login, signup and account linking (control-plane.md §4.5).

State lives in signed cookies (HMAC with JWT_SECRET), so any replica can finish a flow another began.
The provider endpoints come from settings, which lets tests run a local server speaking GitHub's protocol.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
from sqlalchemy import func, select
from starlette.requests import Request

from app.accounts.models import OAuthProvider, User
from app.audit import service as audit
from app.auth.identity import Identity
from app.core import clock, ids
from app.core.errors import InvalidRequest, NotFound
from app.core.security import constant_equal, sign, token_hex
from app.core.state import AppState
from app.teams import service as teams

log = logging.getLogger("wrenn.oauth")

STATE_COOKIE = "oauth_state"
LINK_COOKIE = "oauth_link_user_id"
NEW_SIGNUP_COOKIE = "wrenn_oauth_new_signup"
PROVIDERS = ("github",)


class OAuthFailure(Exception):
    """Ends a callback with ``?error=<code>`` (or ``connect_error`` for linking)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class ProviderIdentity:
    provider_id: str
    email: str
    name: str


def require_provider(state: AppState, provider: str) -> None:
    if provider not in PROVIDERS or not state.settings.github_enabled:
        raise NotFound(f"OAuth provider {provider!r} is not configured", code="provider_not_found")


def callback_url(state: AppState, request: Request, provider: str) -> str:
    base = state.settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")
    return f"{base}/auth/oauth/{provider}/callback"


def authorize_url(state: AppState, request: Request, provider: str, nonce: str) -> str:
    query = urlencode({
        "client_id": state.settings.github_client_id,
        "redirect_uri": callback_url(state, request, provider),
        "scope": "user:email",
        "state": nonce,
    })
    return f"{state.settings.github_authorize_url}?{query}"


def make_state_cookie(state: AppState, intent: str) -> tuple[str, str]:
    nonce = token_hex(16)
    return nonce, f"{nonce}:{sign(state.settings.jwt_secret, f'{nonce}:{intent}')}:{intent}"


def check_state_cookie(state: AppState, cookie: str | None, query_state: str | None) -> str:
    """Return the intent when the cookie is authentic and matches the state echoed by the provider."""
    parts = (cookie or "").split(":")
    if len(parts) != 3 or not query_state:
        raise OAuthFailure("invalid_state")
    nonce, mac, intent = parts
    expected = sign(state.settings.jwt_secret, f"{nonce}:{intent}")
    if not constant_equal(mac, expected) or not constant_equal(nonce, query_state):
        raise OAuthFailure("invalid_state")
    return intent if intent in ("login", "signup") else "login"


def make_link_cookie(state: AppState, user_id: uuid.UUID) -> str:
    ref = ids.encode(ids.USER, user_id)
    return f"{ref}:{sign(state.settings.jwt_secret, 'link:' + ref)}"


def check_link_cookie(state: AppState, cookie: str) -> uuid.UUID:
    ref, _, mac = cookie.partition(":")
    if not mac or not constant_equal(mac, sign(state.settings.jwt_secret, "link:" + ref)):
        raise OAuthFailure("invalid_state")
    parsed = ids.try_decode(ids.USER, ref)
    if parsed is None:
        raise OAuthFailure("invalid_state")
    return parsed


async def fetch_identity(state: AppState, request: Request, provider: str, code: str) -> ProviderIdentity:
    s = state.settings
    try:
        async with httpx.AsyncClient(timeout=15) as client:
            token_resp = await client.post(
                s.github_token_url,
                headers={"Accept": "application/json"},
                data={"client_id": s.github_client_id, "client_secret": s.github_client_secret, "code": code,
                      "redirect_uri": callback_url(state, request, provider)},
            )
            token = token_resp.json().get("access_token") if token_resp.status_code == 200 else None
            if not token:
                raise OAuthFailure("exchange_failed")
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"}
            user_resp = await client.get(f"{s.github_api_url}/user", headers=headers)
            user_resp.raise_for_status()
            profile = user_resp.json()
            email = profile.get("email") or ""
            if not email:
                emails_resp = await client.get(f"{s.github_api_url}/user/emails", headers=headers)
                emails_resp.raise_for_status()
                email = _primary_email(emails_resp.json())
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("github exchange failed: %s", exc)
        raise OAuthFailure("exchange_failed") from exc
    if not email:
        raise OAuthFailure("exchange_failed")
    name = profile.get("name") or profile.get("login") or ""
    return ProviderIdentity(str(profile["id"]), email.strip().lower(), name)


def _primary_email(entries: list[dict[str, object]]) -> str:
    for entry in entries:
        if entry.get("primary") and entry.get("verified"):
            return str(entry.get("email") or "")
    for entry in entries:
        if entry.get("verified"):
            return str(entry.get("email") or "")
    return ""


async def link(state: AppState, provider: str, user_id: uuid.UUID, who: ProviderIdentity) -> None:
    async with state.db() as db, db.begin():
        existing = await db.get(OAuthProvider, (provider, who.provider_id))
        if existing is not None:
            if existing.user_id == user_id:
                return
            raise OAuthFailure("already_linked")
        already = await db.scalar(
            select(OAuthProvider).where(OAuthProvider.user_id == user_id, OAuthProvider.provider == provider)
        )
        if already is not None:
            raise OAuthFailure("already_linked")
        db.add(OAuthProvider(provider=provider, provider_id=who.provider_id, user_id=user_id, email=who.email,
                             created_at=clock.now()))
        actor = Identity(kind="session", team_id=None, user_id=user_id)
        await audit.record(db, actor, None, "user", ids.encode(ids.USER, user_id), "connect_provider",
                           metadata={"provider": provider})


async def login_or_signup(state: AppState, provider: str, intent: str, who: ProviderIdentity) -> tuple[uuid.UUID, bool]:
    """Return (user id, is_new_signup) for a provider identity, or raise OAuthFailure."""
    async with state.db() as db, db.begin():
        linked = await db.get(OAuthProvider, (provider, who.provider_id))
        if linked is not None:
            user = await db.get(User, linked.user_id)
            if user is None or user.status == "deleted":
                raise OAuthFailure("no_account")
            if user.status != "active":
                raise OAuthFailure("account_deactivated")
            return user.id, False
        if intent != "signup":
            raise OAuthFailure("no_account")
        existing = await db.scalar(select(User).where(User.email == who.email))
        if existing is not None:
            if existing.status != "inactive":
                raise OAuthFailure("email_taken")
            await db.delete(existing)
            await db.flush()
        is_first = not await db.scalar(select(func.count()).select_from(User))
        now = clock.now()
        user = User(id=ids.new_uuid(), email=who.email, name=who.name or who.email.split("@")[0],
                    status="active", is_admin=is_first, created_at=now, updated_at=now)
        db.add(user)
        await db.flush()
        await teams.ensure_login_team(db, user)
        db.add(OAuthProvider(provider=provider, provider_id=who.provider_id, user_id=user.id, email=who.email,
                             created_at=now))
        actor = Identity(kind="session", team_id=None, user_id=user.id, email=user.email)
        await audit.record(db, actor, None, "user", ids.encode(ids.USER, user.id), "signup",
                           metadata={"provider": provider})
        return user.id, True


async def disconnect(state: AppState, who: Identity, provider: str) -> None:
    async with state.db() as db, db.begin():
        user = await db.get(User, who.require_user())
        assert user is not None
        mine = list(await db.scalars(select(OAuthProvider).where(OAuthProvider.user_id == user.id)))
        target = next((p for p in mine if p.provider == provider), None)
        if target is None:
            raise NotFound(f"provider {provider!r} is not connected")
        if not user.password_hash and len(mine) <= 1:
            raise InvalidRequest("cannot disconnect your last login method", code="last_login_method")
        await db.delete(target)
        await audit.record(db, who, who.team_id, "user", ids.encode(ids.USER, user.id), "disconnect_provider",
                           metadata={"provider": provider})

