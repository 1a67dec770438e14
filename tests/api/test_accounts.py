"""Accounts, sessions, passwords, API keys, throttling and platform-admin operations."""

from __future__ import annotations

import hashlib

import asyncpg
import pytest

from app.core.config import Settings
from tests.api.helpers import PASSWORD, Platform


async def _db(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(settings.database_url)


async def test_profile_rename_and_sessions(platform: Platform) -> None:
    user = await platform.user(name="Grace")
    assert (await user.get("/v1/me")).json() == {
        "name": "Grace", "email": user.email, "has_password": True, "providers": []}
    assert (await user.patch("/v1/me", json={"name": "  Grace H  "})).status_code == 204
    assert (await user.get("/v1/me")).json()["name"] == "Grace H"

    laptop = await platform.login(user.email)
    listed = (await user.get("/v1/me/sessions")).json()["sessions"]
    assert len(listed) == 2 and sum(s["current"] for s in listed) == 1
    laptop_id = next(s["id"] for s in listed if not s["current"])
    # Another user's session ID is silently ignored.
    stranger = await platform.user()
    assert (await stranger.delete(f"/v1/me/sessions/{laptop_id}")).status_code == 204
    assert (await laptop.get("/v1/me")).status_code == 200
    assert (await user.delete(f"/v1/me/sessions/{laptop_id}")).status_code == 204
    r = await laptop.get("/v1/me")
    assert r.status_code == 401
    assert any(c.startswith("wrenn_sid=\"\"") or c.startswith("wrenn_sid=;") for c in r.headers.get_list("set-cookie"))


async def test_logout_revokes_only_this_session(platform: Platform) -> None:
    user = await platform.user()
    other = await platform.login(user.email)
    assert (await user.post("/v1/auth/logout")).status_code == 204
    assert (await user.get("/v1/me")).status_code == 401
    assert (await other.get("/v1/me")).status_code == 200


async def test_password_change_revokes_sessions(platform: Platform) -> None:
    user = await platform.user()
    other = await platform.login(user.email)
    r = await user.post("/v1/me/password", json={"current_password": PASSWORD, "new_password": "brand new password"})
    assert r.status_code == 204
    assert (await other.get("/v1/me")).status_code == 401
    assert (await user.get("/v1/me")).status_code == 401
    r = await platform.client().post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert r.status_code == 401
    await platform.login(user.email, "brand new password")


async def test_password_reset_flow(platform: Platform) -> None:
    user = await platform.user()
    anon = platform.client()
    assert (await anon.post("/v1/me/password/reset", json={"email": "ghost@example.com"})).status_code == 204
    before = len(platform.outbox())
    assert (await anon.post("/v1/me/password/reset", json={"email": user.email.upper()})).status_code == 204
    assert len(platform.outbox()) == before + 1
    token = platform.last_link(user.email, "/reset-password")
    r = await anon.post("/v1/me/password/reset/confirm", json={"token": token, "new_password": "reset password 1"})
    assert r.status_code == 204
    assert (await user.get("/v1/me")).status_code == 401  # existing sessions revoked
    r = await anon.post("/v1/me/password/reset/confirm", json={"token": token, "new_password": "reset password 2"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_token"
    await platform.login(user.email, "reset password 1")


async def test_login_throttling(platform: Platform) -> None:
    user = await platform.user()
    attacker = platform.client()
    limit = platform.settings.login_max_failures_per_email
    for _ in range(limit):
        r = await attacker.post("/v1/auth/login", json={"email": user.email, "password": "wrong guess!"})
        assert r.status_code == 401
    r = await attacker.post("/v1/auth/login", json={"email": user.email, "password": "wrong guess!"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert 0 < int(r.headers["retry-after"]) <= platform.settings.login_failure_window_sec
    # Even the right password is refused while throttled (the attacker must not learn it).
    r = await attacker.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert r.status_code == 429


async def test_api_keys_hashed_and_scoped(platform: Platform, settings: Settings) -> None:
    user = await platform.user()
    r = await user.post("/v1/api-keys", json={"name": "ci"})
    assert r.status_code == 201
    created = r.json()
    key = created["key"]
    assert key.startswith("wrn_") and len(key) == 36 and created["key_prefix"] == key[:10]
    listed = (await user.get("/v1/api-keys")).json()
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]
    conn = await _db(settings)
    try:
        stored = await conn.fetchval("SELECT key_hash FROM team_api_keys")
        assert stored == hashlib.sha256(key.encode()).hexdigest()
        dump = await conn.fetchval("SELECT string_agg(t::text, ' ') FROM team_api_keys t")
        assert key not in dump
    finally:
        await conn.close()
    # Default name; other teams cannot delete it (silently), owner can.
    assert (await user.post("/v1/api-keys")).json()["name"] == "Unnamed API Key"
    other = await platform.user()
    assert (await other.delete(f"/v1/api-keys/{created['id']}")).status_code == 204
    assert len((await user.get("/v1/api-keys")).json()) == 2
    assert (await user.delete(f"/v1/api-keys/{created['id']}")).status_code == 204
    assert len((await user.get("/v1/api-keys")).json()) == 1


async def test_api_key_is_not_a_session_credential(platform: Platform) -> None:
    user = await platform.user()
    key = (await user.post("/v1/api-keys", json={"name": "k"})).json()["key"]
    sdk = platform.client(headers={"X-API-Key": key})
    assert (await sdk.get("/v1/me")).status_code == 401
    assert (await sdk.get("/v1/api-keys")).status_code == 401


async def test_user_search(platform: Platform) -> None:
    a = await platform.user(email="searchable.one@example.com")
    await platform.user(email="searchable.two@example.com")
    await platform.user(email="search_x@other.com")
    r = await a.get("/v1/users/search", params={"email": "searchable.one@"})
    assert [u["email"] for u in r.json()] == ["searchable.one@example.com"]
    r = await a.get("/v1/users/search", params={"email": "search_@"})  # '_' is literal, not a wildcard
    assert r.json() == []


async def test_delete_account(platform: Platform, settings: Settings) -> None:
    owner = await platform.user()
    member = await platform.user()
    assert (await owner.post(f"/v1/teams/{owner.team_id}/members", json={"email": member.email})).status_code == 201
    r = await owner.request("DELETE", "/v1/me", json={"confirmation": owner.email})
    assert r.status_code == 409 and r.json()["error"]["code"] == "owns_team_with_members"
    # The member (owner of only their own empty team) can delete themselves.
    key = (await member.post("/v1/api-keys", json={"name": "k"})).json()["key"]
    r = await member.request("DELETE", "/v1/me", json={"confirmation": member.email.upper()})
    assert r.status_code == 204
    assert (await member.get("/v1/me")).status_code == 401
    assert (await platform.client(headers={"X-API-Key": key}).get("/v1/me")).status_code == 401
    r = await platform.client().post("/v1/auth/login", json={"email": member.email, "password": PASSWORD})
    assert r.status_code == 401
    members = (await owner.get(f"/v1/teams/{owner.team_id}/members")).json()
    assert member.email not in [m["email"] for m in members]


@pytest.mark.parametrize("path", ["/v1/admin/users", "/v1/admin/teams"])
async def test_admin_routes_refuse_non_admins(platform: Platform, path: str) -> None:
    await platform.user()  # first user: admin
    regular = await platform.user()
    r = await regular.get(path)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert (await platform.client().get(path)).status_code == 401


async def test_admin_user_operations(platform: Platform) -> None:
    admin = await platform.user()
    user = await platform.user()
    other_device = await platform.login(user.email)
    key = (await user.post("/v1/api-keys", json={"name": "k"})).json()["key"]

    users = (await admin.get("/v1/admin/users")).json()
    assert {u["email"] for u in users} >= {admin.email, user.email}
    assert next(u for u in users if u["email"] == admin.email)["is_admin"] is True

    # Deactivation: sessions revoked at once, keys deleted, login refused.
    assert (await admin.put(f"/v1/admin/users/{user.user_id}/active", json={"active": False})).status_code == 204
    assert (await other_device.get("/v1/me")).status_code == 401
    assert (await platform.client(headers={"X-API-Key": key}).get("/v1/me")).status_code == 401
    r = await platform.client().post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert r.status_code == 403 and r.json()["error"]["code"] == "account_disabled"
    assert (await admin.put(f"/v1/admin/users/{user.user_id}/active", json={"active": True})).status_code == 204
    promoted = await platform.login(user.email)

    # Granting admin takes effect immediately (cached session rebuilt); revoking the last admin fails.
    assert (await promoted.get("/v1/admin/users")).status_code == 403
    assert (await admin.put(f"/v1/admin/users/{user.user_id}/admin", json={"admin": True})).status_code == 204
    assert (await promoted.get("/v1/admin/users")).status_code == 200
    assert (await admin.put(f"/v1/admin/users/{admin.user_id}/admin", json={"admin": False})).status_code == 204
    assert (await admin.get("/v1/admin/users")).status_code == 403
    r = await promoted.put(f"/v1/admin/users/{user.user_id}/admin", json={"admin": False})
    assert r.status_code == 400 and "last admin" in r.json()["error"]["message"]


async def test_admin_team_operations(platform: Platform) -> None:
    admin = await platform.user()
    owner = await platform.user()
    teams = (await admin.get("/v1/admin/teams")).json()
    assert owner.team_id in [t["id"] for t in teams]
    assert all(t["id"] != "team-" + "0" * 25 for t in teams)  # the platform team is never listed
    assert (await admin.put(f"/v1/admin/teams/{owner.team_id}/byoc", json={"byoc": True})).status_code == 204
    assert (await admin.put(f"/v1/admin/teams/{owner.team_id}/byoc", json={"byoc": True})).status_code == 204
    assert next(t for t in (await admin.get("/v1/admin/teams")).json() if t["id"] == owner.team_id)["is_byoc"]
    assert (await admin.delete(f"/v1/admin/teams/{owner.team_id}")).status_code == 204
    assert (await admin.delete(f"/v1/admin/teams/{owner.team_id}")).status_code == 404
    # The owner's session lost its team; team routes now say so.
    assert (await owner.get("/v1/api-keys")).json()["error"]["code"] == "no_team"
    assert (await owner.get("/v1/teams")).json() == []


async def test_ip_throttle_ignores_spoofed_forwarded_for(platform: Platform) -> None:
    platform.settings.login_max_failures_per_ip = 5
    attacker = platform.client()
    for n in range(5):
        r = await attacker.post("/v1/auth/login", json={"email": f"victim{n}@example.com", "password": "guess!!!!"},
                                headers={"X-Forwarded-For": f"203.0.113.{n}"})
        assert r.status_code == 401
    r = await attacker.post("/v1/auth/login", json={"email": "another@example.com", "password": "guess!!!!"},
                            headers={"X-Forwarded-For": "198.51.100.7"})
    assert r.status_code == 429
