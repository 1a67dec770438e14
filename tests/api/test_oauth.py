"""GitHub OAuth against a local server that speaks GitHub's real protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from app.core.config import Settings
from app.main import create_app
from tests.api.helpers import PASSWORD, Client, Platform
from tests.fakes.github import FakeGitHub, ServerThread


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub()
    with ServerThread(fake.app()) as server:
        fake.port = server.port
        yield fake


@pytest.fixture
async def oauth_platform(settings: Settings, github: FakeGitHub, flushed_redis: None) -> AsyncIterator[Platform]:
    s = settings.model_copy(update={
        "github_client_id": github.client_id,
        "github_client_secret": github.client_secret,
        "github_authorize_url": f"{github.base}/login/oauth/authorize",
        "github_token_url": f"{github.base}/login/oauth/access_token",
        "github_api_url": github.base,
        "public_url": "http://testserver",
    })
    application: FastAPI = create_app(s)
    async with application.router.lifespan_context(application):
        p = Platform(application, s)
        yield p
        await p.close()


async def _browser_flow(platform: Platform, browser: Client, start: str) -> httpx.Response:
    """Do what a browser does: CP → GitHub authorize (real HTTP) → CP callback."""
    r = await browser.get(start)
    assert r.status_code in (200, 302), r.text
    authorize = r.headers["location"] if r.status_code == 302 else r.json()["auth_url"]
    async with httpx.AsyncClient() as outside:
        gh = await outside.get(authorize)
    assert gh.status_code == 302
    callback = urlsplit(gh.headers["location"])
    assert callback.path == "/auth/oauth/github/callback"
    return await browser.get(f"{callback.path}?{callback.query}")


def _redirect(r: httpx.Response) -> tuple[str, dict[str, list[str]]]:
    assert r.status_code == 302, r.text
    parts = urlsplit(r.headers["location"])
    return f"{parts.scheme}://{parts.netloc}{parts.path}", parse_qs(parts.query)


async def test_signup_then_login_with_github(oauth_platform: Platform, github: FakeGitHub) -> None:
    browser = oauth_platform.client()
    r = await _browser_flow(oauth_platform, browser, "/auth/oauth/github?intent=signup")
    where, query = _redirect(r)
    assert where == "http://frontend.test/auth/github/callback" and not query
    assert "wrenn_sid" in browser.http.cookies and "wrenn_csrf" in browser.http.cookies
    assert "wrenn_oauth_new_signup=1" in ";".join(r.headers.get_list("set-cookie"))
    me = (await browser.get("/v1/me")).json()
    # The private primary email came from the emails API.
    assert me == {"name": "Octo Cat", "email": "octo@example.com", "has_password": False, "providers": ["github"]}

    # A second visit logs the same user in, even with intent=login.
    again = oauth_platform.client()
    r = await _browser_flow(oauth_platform, again, "/auth/oauth/github?intent=login")
    assert _redirect(r)[1] == {}
    assert (await again.get("/v1/me")).json()["email"] == "octo@example.com"


async def test_login_intent_without_account_and_denied_consent(oauth_platform: Platform, github: FakeGitHub) -> None:
    browser = oauth_platform.client()
    r = await _browser_flow(oauth_platform, browser, "/auth/oauth/github?intent=login")
    assert _redirect(r)[1] == {"error": ["no_account"]}
    assert (await browser.get("/v1/me")).status_code == 401
    github.deny = True
    r = await _browser_flow(oauth_platform, browser, "/auth/oauth/github?intent=signup")
    assert _redirect(r)[1] == {"error": ["access_denied"]}


async def test_forged_state_and_missing_code_are_refused(oauth_platform: Platform) -> None:
    browser = oauth_platform.client()
    await browser.get("/auth/oauth/github?intent=signup")
    r = await browser.get("/auth/oauth/github/callback?code=abc&state=forged")
    assert _redirect(r)[1] == {"error": ["invalid_state"]}
    stranger = oauth_platform.client()  # no state cookie at all
    r = await stranger.get("/auth/oauth/github/callback?code=abc&state=x")
    assert _redirect(r)[1] == {"error": ["invalid_state"]}
    assert "oauth_state" not in browser.http.cookies  # a failed callback ends the flow
    await browser.get("/auth/oauth/github?intent=signup")
    state = browser.http.cookies["oauth_state"].split(":")[0]
    r = await browser.get(f"/auth/oauth/github/callback?state={state}")
    assert _redirect(r)[1] == {"error": ["missing_code"]}


async def test_signup_with_taken_email(oauth_platform: Platform, github: FakeGitHub) -> None:
    await oauth_platform.user(email="octo@example.com")
    browser = oauth_platform.client()
    r = await _browser_flow(oauth_platform, browser, "/auth/oauth/github?intent=signup")
    assert _redirect(r)[1] == {"error": ["email_taken"]}


async def test_connect_and_disconnect_provider(oauth_platform: Platform, github: FakeGitHub) -> None:
    user = await oauth_platform.user(email="linker@example.com")
    r = await _browser_flow(oauth_platform, user, "/v1/me/providers/github/connect")
    where, query = _redirect(r)
    assert where == "http://frontend.test/dashboard/settings" and query == {"connected": ["github"]}
    assert (await user.get("/v1/me")).json()["providers"] == ["github"]

    # The same GitHub identity cannot be linked to a second account.
    other = await oauth_platform.user(email="other@example.com")
    r = await _browser_flow(oauth_platform, other, "/v1/me/providers/github/connect")
    assert _redirect(r)[1] == {"connect_error": ["already_linked"]}

    # Linked user logs in through GitHub.
    browser = oauth_platform.client()
    r = await _browser_flow(oauth_platform, browser, "/auth/oauth/github?intent=login")
    assert (await browser.get("/v1/me")).json()["email"] == "linker@example.com"

    r = await user.delete("/v1/me/providers/github")
    assert r.status_code == 204
    assert (await user.get("/v1/me")).json()["providers"] == []
    r = await user.delete("/v1/me/providers/github")
    assert r.status_code == 404


async def test_last_login_method_cannot_be_removed(oauth_platform: Platform, github: FakeGitHub) -> None:
    browser = oauth_platform.client()
    await _browser_flow(oauth_platform, browser, "/auth/oauth/github?intent=signup")
    r = await browser.delete("/v1/me/providers/github")
    assert r.status_code == 400 and r.json()["error"]["code"] == "last_login_method"
    # Adding a password (no current password; confirmation required) makes it removable.
    r = await browser.post("/v1/me/password", json={"new_password": PASSWORD, "confirm_password": PASSWORD + "x"})
    assert r.status_code == 400
    r = await browser.post("/v1/me/password", json={"new_password": PASSWORD, "confirm_password": PASSWORD})
    assert r.status_code == 204
    relogged = await oauth_platform.login("octo@example.com")
    assert (await relogged.delete("/v1/me/providers/github")).status_code == 204
