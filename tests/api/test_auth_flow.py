"""The foundation's headline flow, end to end against real Postgres and Redis."""

from __future__ import annotations

import hashlib

from tests.api.helpers import PASSWORD, Platform


async def test_signup_activate_login_csrf_switch_team_logout_all(platform: Platform) -> None:
    anon = platform.client()
    r = await anon.post("/v1/auth/signup", json={"email": "Ada@Example.com ", "password": PASSWORD, "name": "Ada"})
    assert r.status_code == 201 and "message" in r.json()

    # Not active yet: login is refused with the documented code.
    r = await anon.post("/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
    assert r.status_code == 403 and r.json()["error"]["code"] == "account_not_activated"

    token = platform.last_link("ada@example.com", "/activate")
    r = await anon.post("/v1/auth/activate", json={"token": token})
    assert r.status_code == 200
    body = r.json()
    assert body["email"] == "ada@example.com" and body["role"] == "owner"
    assert body["user_id"].startswith("usr-") and body["team_id"].startswith("team-")
    assert body["is_admin"] is True  # first user of the platform
    # A token is single-use.
    r = await anon.post("/v1/auth/activate", json={"token": token})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_token"

    browser = platform.client(csrf=False)
    r = await browser.post("/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
    assert r.status_code == 200
    set_cookie = r.headers.get_list("set-cookie")
    sid_cookie = next(c for c in set_cookie if c.startswith("wrenn_sid="))
    assert "HttpOnly" in sid_cookie and "SameSite=strict" in sid_cookie.replace("Strict", "strict")
    csrf_cookie = next(c for c in set_cookie if c.startswith("wrenn_csrf="))
    assert "HttpOnly" not in csrf_cookie
    first_sid = browser.http.cookies["wrenn_sid"]
    csrf = browser.http.cookies["wrenn_csrf"]

    # A cookie-authenticated mutation without the CSRF header is refused, with it accepted.
    r = await browser.post("/v1/teams", json={"name": "Second Team"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = await browser.post("/v1/teams", json={"name": "Second Team"}, headers={"X-CSRF-Token": "0" * 64})
    assert r.status_code == 403
    r = await browser.post("/v1/teams", json={"name": "Second Team"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201
    second_team = r.json()["id"]

    # switch-team rotates the session: new cookie value, the old one stops working.
    r = await browser.post("/v1/auth/switch-team", json={"team_id": second_team}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["team_id"] == second_team and r.json()["role"] == "owner"
    new_sid = browser.http.cookies["wrenn_sid"]
    assert new_sid != first_sid
    stale = platform.client()
    stale.http.cookies.set("wrenn_sid", first_sid)
    r = await stale.get("/v1/me")
    assert r.status_code == 401
    r = await browser.get("/v1/me")
    assert r.status_code == 200 and r.json()["email"] == "ada@example.com"

    # Sessions are stored hashed: the listed IDs are SHA-256 digests, never the cookie value.
    r = await browser.get("/v1/me/sessions")
    listed = {s["id"]: s for s in r.json()["sessions"]}
    assert hashlib.sha256(new_sid.encode()).hexdigest() in listed
    assert new_sid not in listed

    # logout-all kills every session of the user, including other devices.
    other_device = await platform.login("ada@example.com")
    assert (await other_device.get("/v1/me")).status_code == 200
    r = await browser.post("/v1/auth/logout-all", headers={"X-CSRF-Token": browser.http.cookies["wrenn_csrf"]})
    assert r.status_code == 204
    assert (await other_device.get("/v1/me")).status_code == 401
    assert (await browser.get("/v1/me")).status_code == 401
