"""``/auth/oauth/{provider}`` (+ callback) and ``/v1/me/providers/{provider}*``."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse

from app.accounts import service as accounts
from app.auth import oauth, sessions
from app.auth.deps import SessionUser, State
from app.core.http import ORJSONResponse

router = APIRouter(tags=["auth"])

COOKIE_MAX_AGE = 600


def _frontend(state: State, path: str) -> str:
    return f"{state.settings.frontend_url}{path}"


@router.get("/auth/oauth/{provider}")
async def oauth_redirect(provider: str, request: Request, state: State,
                         intent: str = Query("login", max_length=16)) -> Response:
    oauth.require_provider(state, provider)
    intent = intent if intent in ("login", "signup") else "login"
    nonce, cookie = oauth.make_state_cookie(state, intent)
    response = RedirectResponse(oauth.authorize_url(state, request, provider, nonce), status_code=302)
    response.set_cookie(oauth.STATE_COOKIE, cookie, max_age=COOKIE_MAX_AGE, httponly=True, samesite="lax",
                        path="/")
    return response


@router.get("/auth/oauth/{provider}/callback")
async def oauth_callback(
    provider: str, request: Request, state: State,
    code: str | None = Query(None, max_length=2000), state_param: str | None = Query(None, alias="state",
                                                                                       max_length=200),
    error: str | None = Query(None, max_length=200),
) -> Response:
    base = _frontend(state, f"/auth/{provider}/callback")
    link_cookie = request.cookies.get(oauth.LINK_COOKIE)
    try:
        oauth.require_provider(state, provider)
        intent = oauth.check_state_cookie(state, request.cookies.get(oauth.STATE_COOKIE), state_param)
        if error:
            raise oauth.OAuthFailure("access_denied")
        if not code:
            raise oauth.OAuthFailure("missing_code")
        identity = await oauth.fetch_identity(state, request, provider, code)
        if link_cookie:
            return await _finish_link(state, provider, link_cookie, identity)
        user_id, is_new = await oauth.login_or_signup(state, provider, intent, identity)
        result = await accounts.login_user_id(state, user_id, request)
    except oauth.OAuthFailure as failure:
        key = "connect_error" if link_cookie else "error"
        target = (_frontend(state, "/dashboard/settings") if link_cookie else base) + f"?{key}={failure.code}"
        response: Response = RedirectResponse(target, status_code=302)
        _clear_flow_cookies(response)
        return response
    except Exception:
        response = RedirectResponse(f"{base}?error=internal_error", status_code=302)
        _clear_flow_cookies(response)
        return response
    response = RedirectResponse(base, status_code=302)
    _clear_flow_cookies(response)
    sessions.set_session_cookies(response, state, request, result.raw_sid, result.csrf)
    if is_new:
        response.set_cookie(oauth.NEW_SIGNUP_COOKIE, "1", max_age=60, path="/auth/", samesite="lax")
    return response


async def _finish_link(state: State, provider: str, cookie: str, identity: oauth.ProviderIdentity) -> Response:
    user_id = oauth.check_link_cookie(state, cookie)
    await oauth.link(state, provider, user_id, identity)
    response = RedirectResponse(_frontend(state, f"/dashboard/settings?connected={provider}"), status_code=302)
    _clear_flow_cookies(response)
    return response


def _clear_flow_cookies(response: Response) -> None:
    response.delete_cookie(oauth.STATE_COOKIE, path="/")
    response.delete_cookie(oauth.LINK_COOKIE, path="/")


@router.get("/v1/me/providers/{provider}/connect", tags=["account"])
async def connect_provider(provider: str, who: SessionUser, request: Request, state: State) -> ORJSONResponse:
    oauth.require_provider(state, provider)
    nonce, cookie = oauth.make_state_cookie(state, "login")
    response = ORJSONResponse({"auth_url": oauth.authorize_url(state, request, provider, nonce)})
    response.set_cookie(oauth.STATE_COOKIE, cookie, max_age=COOKIE_MAX_AGE, httponly=True, samesite="lax", path="/")
    response.set_cookie(oauth.LINK_COOKIE, oauth.make_link_cookie(state, who.require_user()),
                        max_age=COOKIE_MAX_AGE, httponly=True, samesite="lax", path="/")
    return response


@router.delete("/v1/me/providers/{provider}", status_code=204, tags=["account"])
async def disconnect_provider(provider: str, who: SessionUser, state: State) -> Response:
    await oauth.disconnect(state, who, provider)
    return Response(status_code=204)
