"""Spec conformance of the 0.2.0 foundation: every operation is routed, and answers as documented.

Every request goes through ``ConformanceRecorder.asgi``: a status the spec does not document for the operation
(beyond the explicit ``UNDOCUMENTED_STATUSES`` table) or a body that does not validate fails the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from app.core.config import Settings
from openapi.conformance import ConformanceRecorder
from openapi.coverage import coverage
from openapi.spec import load_spec
from tests.api.helpers import PASSWORD, Client, Platform

FOUNDATION = (
    "signup", "activate", "logout", "logoutAll", "listSessions", "revokeSession", "switchTeam", "login",
    "oauthRedirect", "oauthCallback", "getMe", "updateName", "deleteAccount", "changePassword",
    "requestPasswordReset", "confirmPasswordReset", "connectProvider", "disconnectProvider", "createAPIKey",
    "listAPIKeys", "deleteAPIKey", "searchUsers", "listTeams", "createTeam", "getTeam", "renameTeam",
    "deleteTeam", "listTeamMembers", "addTeamMember", "updateMemberRole", "removeTeamMember", "leaveTeam",
    "setUserAdmin", "adminListTeams", "adminSetTeamBYOC", "adminDeleteTeam", "adminListUsers",
    "adminSetUserActive",
)
FOUNDATION_TAGS = {"auth", "account", "me", "api-keys", "users", "teams"}
# With no OAuth provider configured these answer the documented 404 (OAuth has its own tests).
OAUTH_NOT_CONFIGURED = {"oauthRedirect", "connectProvider", "disconnectProvider"}


def test_foundation_scope_is_the_spec_tags() -> None:
    spec = load_spec()
    by_tag = {op.operation_id for op in spec.operations if FOUNDATION_TAGS & set(op.tags)}
    admin_users_teams = {op.operation_id for op in spec.operations
                         if op.path.startswith(("/v1/admin/users", "/v1/admin/teams"))}
    assert by_tag | admin_users_teams == set(FOUNDATION)


def test_foundation_operations_are_implemented() -> None:
    implemented, missing, extra = coverage()
    missing_ids = {op.operation_id for op in missing}
    assert not missing_ids & set(FOUNDATION), sorted(missing_ids & set(FOUNDATION))
    assert not extra, [str(r) for r in extra]
    assert len(implemented) + len(missing) == 111


@pytest.fixture
async def recorded(app: FastAPI, settings: Settings) -> AsyncIterator[tuple[Platform, ConformanceRecorder]]:
    recorder = ConformanceRecorder(require_properties=True)
    platform = Platform(recorder.asgi(app), settings)
    yield platform, recorder
    await platform.close()


def _ok(response_status: int, expected: int, text: str) -> None:
    assert response_status == expected, text


async def test_foundation_happy_paths_conform(recorded: tuple[Platform, ConformanceRecorder]) -> None:
    platform, rec = recorded
    # signup + activate (the first user becomes platform admin), login
    admin = await platform.user("Admin")
    alice = await platform.user("Alice")
    bob = await platform.user("Bob")
    carol = await platform.user("Carol")
    alice2 = await platform.login(alice.email)

    # account
    r = await alice.get("/v1/me")
    _ok(r.status_code, 200, r.text)
    r = await alice.patch("/v1/me", json={"name": "Alice A"})
    _ok(r.status_code, 204, r.text)
    r = await alice.get("/v1/me/sessions")
    _ok(r.status_code, 200, r.text)
    other = next(s["id"] for s in r.json()["sessions"] if not s["current"])
    r = await alice.delete(f"/v1/me/sessions/{other}")
    _ok(r.status_code, 204, r.text)
    assert (await alice2.get("/v1/me")).status_code == 401

    # API keys
    r = await alice.post("/v1/api-keys", json={"name": "ci"})
    _ok(r.status_code, 201, r.text)
    key_id = r.json()["id"]
    r = await alice.get("/v1/api-keys")
    _ok(r.status_code, 200, r.text)
    r = await alice.delete(f"/v1/api-keys/{key_id}")
    _ok(r.status_code, 204, r.text)

    # users search
    r = await alice.get("/v1/users/search", params={"email": bob.email[:8]})
    _ok(r.status_code, 200, r.text)

    # teams
    r = await alice.get("/v1/teams")
    _ok(r.status_code, 200, r.text)
    r = await alice.post("/v1/teams", json={"name": "Conformance Team"})
    _ok(r.status_code, 201, r.text)
    team = r.json()["id"]
    r = await alice.post("/v1/auth/switch-team", json={"team_id": team})
    _ok(r.status_code, 200, r.text)
    r = await alice.get(f"/v1/teams/{team}")
    _ok(r.status_code, 200, r.text)
    r = await alice.patch(f"/v1/teams/{team}", json={"name": "Renamed Team"})
    _ok(r.status_code, 204, r.text)
    for member in (bob, carol):
        r = await alice.post(f"/v1/teams/{team}/members", json={"email": member.email})
        _ok(r.status_code, 201, r.text)
    r = await alice.get(f"/v1/teams/{team}/members")
    _ok(r.status_code, 200, r.text)
    r = await alice.patch(f"/v1/teams/{team}/members/{bob.user_id}", json={"role": "admin"})
    _ok(r.status_code, 204, r.text)
    r = await alice.delete(f"/v1/teams/{team}/members/{carol.user_id}")
    _ok(r.status_code, 204, r.text)
    r = await bob.post("/v1/auth/switch-team", json={"team_id": team})
    _ok(r.status_code, 200, r.text)
    r = await bob.post(f"/v1/teams/{team}/leave")
    _ok(r.status_code, 204, r.text)
    r = await alice.delete(f"/v1/teams/{team}")
    _ok(r.status_code, 204, r.text)

    # password reset and change
    r = await platform.client().post("/v1/me/password/reset", json={"email": carol.email})
    _ok(r.status_code, 204, r.text)
    token = platform.last_link(carol.email, "/reset-password")
    r = await platform.client().post("/v1/me/password/reset/confirm",
                                     json={"token": token, "new_password": "another good password"})
    _ok(r.status_code, 204, r.text)
    r = await bob.post("/v1/me/password", json={"current_password": PASSWORD, "new_password": "bobs new password"})
    _ok(r.status_code, 204, r.text)

    # OAuth with no provider configured: documented 404s and the callback's error redirect
    anon = platform.client()
    r = await anon.get("/auth/oauth/github")
    _ok(r.status_code, 404, r.text)
    r = await anon.get("/auth/oauth/github/callback", params={"code": "x", "state": "y"})
    _ok(r.status_code, 302, r.text)
    r = await alice.get("/v1/me/providers/github/connect")
    _ok(r.status_code, 404, r.text)
    r = await alice.delete("/v1/me/providers/github")
    _ok(r.status_code, 404, r.text)

    # platform admin
    dave = await platform.user("Dave")
    r = await admin.get("/v1/admin/users")
    _ok(r.status_code, 200, r.text)
    r = await admin.get("/v1/admin/teams")
    _ok(r.status_code, 200, r.text)
    for flag in (True, False):
        r = await admin.put(f"/v1/admin/users/{dave.user_id}/admin", json={"admin": flag})
        _ok(r.status_code, 204, r.text)
    for flag in (False, True):
        r = await admin.put(f"/v1/admin/users/{dave.user_id}/active", json={"active": flag})
        _ok(r.status_code, 204, r.text)
    r = await admin.put(f"/v1/admin/teams/{dave.team_id}/byoc", json={"byoc": True})
    _ok(r.status_code, 204, r.text)
    r = await admin.delete(f"/v1/admin/teams/{dave.team_id}")
    _ok(r.status_code, 204, r.text)

    # delete account, logout, logout-all
    erin = await platform.user("Erin")
    r = await erin.delete("/v1/me", json={"confirmation": erin.email})
    _ok(r.status_code, 204, r.text)
    r = await alice.post("/v1/auth/logout")
    _ok(r.status_code, 204, r.text)
    carol_again = await platform.login(carol.email, "another good password")
    r = await carol_again.post("/v1/auth/logout-all")
    _ok(r.status_code, 204, r.text)

    rec.assert_ok()
    rec.assert_covered(FOUNDATION)
    rec.assert_covered(set(FOUNDATION) - OAUTH_NOT_CONFIGURED, success=True)


async def test_foundation_error_responses_conform(recorded: tuple[Platform, ConformanceRecorder]) -> None:
    """The undocumented-but-legitimate statuses (UNDOCUMENTED_STATUSES) answer with the error envelope."""
    platform, rec = recorded
    user = await platform.user()
    anon = platform.client()
    no_csrf: Client = platform.client(csrf=False)
    no_csrf.http.cookies = user.http.cookies

    assert (await anon.get("/v1/me")).status_code == 401
    assert (await anon.post("/v1/teams", json={"name": "x"})).status_code == 401
    assert (await no_csrf.post("/v1/teams", json={"name": "x"})).status_code == 403
    assert (await user.get("/v1/admin/users")).status_code in (200, 403)
    assert (await user.post("/v1/teams", content=b"{not json",
                            headers={"content-type": "application/json"})).status_code == 400
    assert (await user.post("/v1/teams", json={"name": 5})).status_code == 400
    assert (await user.post("/v1/teams", json=["a"])).status_code == 400
    assert (await user.get("/v1/teams/not-an-id")).status_code in (400, 403)
    assert (await user.delete("/v1/api-keys/key-nope")).status_code == 400
    assert (await user.put("/v1/me")).status_code == 405
    big = {"name": "x" * (platform.settings.max_json_body_bytes + 10)}
    assert (await user.patch("/v1/me", json=big)).status_code == 413
    bad_login = {"email": user.email, "password": "wrong password!"}
    assert (await anon.post("/v1/auth/login", json=bad_login)).status_code == 401
    rec.assert_ok()
    statuses = {c.status for c in rec.checked}
    assert {400, 401, 403, 405, 413} <= statuses
