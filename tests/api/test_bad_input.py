"""Bad input never hurts: every foundation operation gets the envelope with the right status, and
nothing is half-written. Generic malformations are applied to every JSON operation; semantic ones
are listed per operation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.helpers import PASSWORD, Client, Platform

# (method, path template, a valid body) — {team} is the caller's team, {me} the caller's user id.
JSON_OPERATIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/auth/signup", {"email": "x@example.com", "password": PASSWORD, "name": "X"}),
    ("POST", "/v1/auth/activate", {"token": "0" * 32}),
    ("POST", "/v1/auth/login", {"email": "x@example.com", "password": PASSWORD}),
    ("POST", "/v1/auth/switch-team", {"team_id": "{team}"}),
    ("PATCH", "/v1/me", {"name": "New Name"}),
    ("DELETE", "/v1/me", {"confirmation": "nobody@example.com"}),
    ("POST", "/v1/me/password", {"current_password": PASSWORD, "new_password": PASSWORD + "2"}),
    ("POST", "/v1/me/password/reset", {"email": "x@example.com"}),
    ("POST", "/v1/me/password/reset/confirm", {"token": "0" * 32, "new_password": PASSWORD}),
    ("POST", "/v1/api-keys", {"name": "k"}),
    ("POST", "/v1/teams", {"name": "Team X"}),
    ("PATCH", "/v1/teams/{team}", {"name": "Team Y"}),
    ("POST", "/v1/teams/{team}/members", {"email": "x@example.com"}),
    ("PATCH", "/v1/teams/{team}/members/{me}", {"role": "admin"}),
    ("PUT", "/v1/admin/users/{me}/active", {"active": True}),
    ("PUT", "/v1/admin/users/{me}/admin", {"admin": True}),
    ("PUT", "/v1/admin/teams/{team}/byoc", {"byoc": True}),
]

MALFORMED: dict[str, tuple[bytes, int]] = {
    "truncated-json": (b'{"email": "a', 400),
    "not-an-object": (b"[1, 2, 3]", 400),
    "bad-utf8": (b'{"name": "\xff\xfe\xfa"}', 400),
    "empty-body": (b"", 400),
    "oversized": (b'{"name": "' + b"a" * (2 * 1024 * 1024) + b'"}', 413),
}


def _fill(path: str, caller: Client) -> str:
    return path.replace("{team}", caller.team_id).replace("{me}", caller.user_id)


async def _snapshot(platform: Platform, caller: Client) -> tuple[Any, ...]:
    me = (await caller.get("/v1/me")).json()
    teams = (await caller.get("/v1/teams")).json()
    keys = (await caller.get("/v1/api-keys")).json()
    members = (await caller.get(f"/v1/teams/{caller.team_id}/members")).json()
    return me, teams, keys, members, len(platform.outbox())


def _assert_envelope(r: Any, status: int) -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) >= {"error"}
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


# The API-key body is optional (its only field has a default), so an empty body is valid there.
CASES = [
    (m, p, kind) for m, p, _ in JSON_OPERATIONS for kind in MALFORMED
    if not (p == "/v1/api-keys" and kind == "empty-body")
]


@pytest.mark.parametrize(("method", "path", "kind"), CASES, ids=[f"{m} {p} {k}" for m, p, k in CASES])
async def test_malformed_bodies_are_rejected_without_effect(platform: Platform, method: str, path: str,
                                                            kind: str) -> None:
    caller = await platform.user()
    before = await _snapshot(platform, caller)
    payload, status = MALFORMED[kind]
    r = await caller.request(method, _fill(path, caller), content=payload,
                             headers={"content-type": "application/json"})
    _assert_envelope(r, status)
    if status == 400:
        assert r.json()["error"]["code"] == "invalid_request"
    assert await _snapshot(platform, caller) == before


WRONG_TYPES = [(m, p, body) for m, p, body in JSON_OPERATIONS]


@pytest.mark.parametrize(("method", "path", "body"), WRONG_TYPES, ids=[f"{m} {p}" for m, p, _ in WRONG_TYPES])
async def test_wrong_types_and_missing_fields_name_the_field(platform: Platform, method: str, path: str,
                                                             body: dict[str, Any]) -> None:
    caller = await platform.user()
    before = await _snapshot(platform, caller)
    for field in body:
        wrong = dict(body, **{field: [] if not isinstance(body[field], list) else 7})
        r = await caller.request(method, _fill(path, caller), json=_filled(wrong, caller))
        _assert_envelope(r, 400)
        assert field in r.json()["error"]["message"], r.text
        missing = {k: v for k, v in body.items() if k != field}
        r = await caller.request(method, _fill(path, caller), json=_filled(missing, caller))
        if r.status_code != 400:  # optional fields (api-key name, password change) may be omitted
            assert field in ("name", "current_password") and path in ("/v1/api-keys", "/v1/me/password")
            continue
        assert field in r.json()["error"]["message"], r.text
    after = await _snapshot(platform, caller)
    assert after[1] == before[1]
    if path != "/v1/api-keys":  # there, omitting the optional name legitimately created a key
        assert after[2] == before[2]


def _filled(body: dict[str, Any], caller: Client) -> dict[str, Any]:
    return {k: (_fill(v, caller) if isinstance(v, str) else v) for k, v in body.items()}


# Semantic bad input per operation: (method, path, body, status, code)
SEMANTIC: list[tuple[str, str, dict[str, Any] | None, int, str]] = [
    ("POST", "/v1/auth/signup", {"email": "not-an-email", "password": PASSWORD, "name": "X"}, 400, "invalid_request"),
    ("POST", "/v1/auth/signup", {"email": "x@example.com", "password": "short", "name": "X"}, 400, "invalid_request"),
    ("POST", "/v1/auth/signup", {"email": "x@example.com", "password": "é" * 40, "name": "X"}, 400, "invalid_request"),
    ("POST", "/v1/auth/signup", {"email": "x@example.com", "password": PASSWORD, "name": "   "}, 400,
     "invalid_request"),
    ("POST", "/v1/auth/signup", {"email": "x@example.com", "password": PASSWORD, "name": "n" * 101}, 400,
     "invalid_request"),
    ("POST", "/v1/auth/activate", {"token": "nonsense"}, 400, "invalid_token"),
    ("POST", "/v1/auth/activate", {"token": ""}, 400, "invalid_token"),
    ("POST", "/v1/auth/login", {"email": "{email}", "password": "wrong password"}, 401, "unauthorized"),
    ("POST", "/v1/auth/login", {"email": "ghost@example.com", "password": PASSWORD}, 401, "unauthorized"),
    ("POST", "/v1/auth/switch-team", {"team_id": "team-nope"}, 400, "invalid_request"),
    ("POST", "/v1/auth/switch-team", {"team_id": "team-" + "0" * 24 + "1"}, 404, "not_found"),
    ("POST", "/v1/auth/switch-team", {"team_id": "team-zzzzzzzzzzzzzzzzzzzzzzzzz"}, 400, "invalid_request"),
    ("PATCH", "/v1/me", {"name": ""}, 400, "invalid_request"),
    ("PATCH", "/v1/me", {"name": "x" * 101}, 400, "invalid_request"),
    ("DELETE", "/v1/me", {"confirmation": "someone-else@example.com"}, 400, "invalid_request"),
    ("POST", "/v1/me/password", {"current_password": "wrong password", "new_password": PASSWORD + "2"}, 401,
     "wrong_password"),
    ("POST", "/v1/me/password", {"current_password": PASSWORD, "new_password": "short"}, 400, "invalid_request"),
    ("POST", "/v1/me/password", {"new_password": PASSWORD + "2"}, 400, "invalid_request"),
    ("POST", "/v1/me/password/reset/confirm", {"token": "f" * 32, "new_password": PASSWORD}, 400, "invalid_token"),
    ("POST", "/v1/me/password/reset/confirm", {"token": "f" * 32, "new_password": "short"}, 400, "invalid_request"),
    ("DELETE", "/v1/api-keys/not-a-key-id", None, 400, "invalid_request"),
    ("POST", "/v1/teams", {"name": "bad/name!"}, 400, "invalid_request"),
    ("POST", "/v1/teams", {"name": "x" * 129}, 400, "invalid_request"),
    ("PATCH", "/v1/teams/{team}", {"name": ""}, 400, "invalid_request"),
    ("GET", "/v1/teams/garbage", None, 400, "invalid_request"),
    ("POST", "/v1/teams/{team}/members", {"email": "ghost@example.com"}, 404, "not_found"),
    ("POST", "/v1/teams/{team}/members", {"email": "{email}"}, 400, "invalid_request"),
    ("POST", "/v1/teams/{team}/members", {"email": "no-at-sign"}, 400, "invalid_request"),
    ("PATCH", "/v1/teams/{team}/members/{me}", {"role": "owner"}, 400, "invalid_request"),
    ("PATCH", "/v1/teams/{team}/members/usr-" + "0" * 25, {"role": "admin"}, 404, "not_found"),
    ("DELETE", "/v1/teams/{team}/members/usr-bad", None, 400, "invalid_request"),
    ("GET", "/v1/users/search?email=ab", None, 400, "invalid_request"),
    ("GET", "/v1/users/search?email=abcdef", None, 400, "invalid_request"),
    ("GET", "/v1/users/search", None, 400, "invalid_request"),
    ("PUT", "/v1/admin/users/usr-bad/active", {"active": False}, 400, "invalid_request"),
    ("PUT", "/v1/admin/users/{me}/active", {"active": False}, 400, "invalid_request"),
    ("PUT", "/v1/admin/users/usr-" + "0" * 25 + "/admin", {"admin": True}, 404, "not_found"),
    ("PUT", "/v1/admin/users/{me}/admin", {"admin": False}, 400, "invalid_request"),
    ("PUT", "/v1/admin/users/{me}/admin", {"admin": "true"}, 400, "invalid_request"),
    ("PUT", "/v1/admin/teams/{team}/byoc", {"byoc": False}, 400, "invalid_request"),
    ("PUT", "/v1/admin/teams/team-" + "0" * 24 + "9/byoc", {"byoc": True}, 404, "not_found"),
    ("DELETE", "/v1/admin/teams/team-" + "0" * 25, None, 404, "not_found"),
    ("GET", "/v1/admin/users?page=0", None, 400, "invalid_request"),
    ("GET", "/v1/admin/teams?page=abc", None, 400, "invalid_request"),
    ("GET", "/auth/oauth/gitlab", None, 404, "provider_not_found"),
    ("GET", "/v1/me/providers/github/connect", None, 404, "provider_not_found"),
    ("DELETE", "/v1/me/providers/github", None, 404, "not_found"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), SEMANTIC,
                         ids=[f"{m} {p} {s}" for m, p, _, s, _ in SEMANTIC])
async def test_semantic_bad_input(platform: Platform, method: str, path: str, body: dict[str, Any] | None,
                                  status: int, code: str) -> None:
    caller = await platform.user()  # the first user of each test database: a platform admin
    before = await _snapshot(platform, caller)
    if body is not None:
        body = {k: (v.replace("{email}", caller.email) if isinstance(v, str) else v) for k, v in body.items()}
        body = _filled(body, caller)
    r = await caller.request(method, _fill(path, caller), json=body)
    _assert_envelope(r, status)
    assert r.json()["error"]["code"] == code, r.text
    after = await _snapshot(platform, caller)
    assert after[1:4] == before[1:4]


async def test_unknown_routes_and_methods_are_enveloped(platform: Platform) -> None:
    c = platform.client()
    r = await c.get("/v1/definitely-not-here")
    _assert_envelope(r, 404)
    assert r.json()["error"]["code"] == "not_found"
    r = await c.request("PUT", "/v1/auth/login", json={})
    _assert_envelope(r, 405)
    r = await c.get("/v1/me/")  # trailing slash is tolerated like the reference
    _assert_envelope(r, 401)


async def test_signup_conflicts(platform: Platform) -> None:
    user = await platform.user()
    c = platform.client()
    r = await c.post("/v1/auth/signup", json={"email": user.email, "password": PASSWORD, "name": "Again"})
    _assert_envelope(r, 409)
    assert r.json()["error"]["code"] == "email_taken"
    body = {"email": "pending@example.com", "password": PASSWORD, "name": "Pending"}
    assert (await c.post("/v1/auth/signup", json=body)).status_code == 201
    r = await c.post("/v1/auth/signup", json=body)
    _assert_envelope(r, 409)
    assert r.json()["error"]["code"] == "signup_cooldown"
