"""Role matrix: every team operation × {owner, admin, member, non-member, other-team session}."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from tests.api.helpers import Client, Platform


@dataclass
class Scene:
    team_id: str
    callers: dict[str, Client]
    target: Client  # a plain member that operations on members act upon


async def build_scene(platform: Platform) -> Scene:
    owner = await platform.user(name="Owner")
    admin = await platform.user(name="Admin")
    member = await platform.user(name="Member")
    target = await platform.user(name="Target")
    outsider = await platform.user(name="Outsider")
    elsewhere = await platform.user(name="Elsewhere")  # a member of the team, but its session is on its own team
    team = owner.team_id
    for user in (admin, member, target, elsewhere):
        r = await owner.post(f"/v1/teams/{team}/members", json={"email": user.email})
        assert r.status_code == 201, r.text
    r = await owner.patch(f"/v1/teams/{team}/members/{admin.user_id}", json={"role": "admin"})
    assert r.status_code == 204
    # admin/member/target switch their session to the team (elsewhere does not).
    for user in (admin, member, target):
        r = await user.post("/v1/auth/switch-team", json={"team_id": team})
        assert r.status_code == 200, r.text
    callers = {"owner": owner, "admin": admin, "member": member, "non-member": outsider, "other-team": elsewhere}
    return Scene(team, callers, target)


async def _get(c: Client, s: Scene) -> httpx.Response:
    return await c.get(f"/v1/teams/{s.team_id}")


async def _rename(c: Client, s: Scene) -> httpx.Response:
    return await c.patch(f"/v1/teams/{s.team_id}", json={"name": "Renamed Team"})


async def _delete(c: Client, s: Scene) -> httpx.Response:
    return await c.delete(f"/v1/teams/{s.team_id}")


async def _members(c: Client, s: Scene) -> httpx.Response:
    return await c.get(f"/v1/teams/{s.team_id}/members")


async def _add(c: Client, s: Scene) -> httpx.Response:
    newcomer_email = f"new-{id(c)}@example.com"
    await _ensure_user(c, newcomer_email)
    return await c.post(f"/v1/teams/{s.team_id}/members", json={"email": newcomer_email})


_PLATFORM: dict[int, Platform] = {}


async def _ensure_user(c: Client, email: str) -> None:
    platform = _PLATFORM[id(c)]
    await platform.user(email=email)


async def _role(c: Client, s: Scene) -> httpx.Response:
    return await c.patch(f"/v1/teams/{s.team_id}/members/{s.target.user_id}", json={"role": "admin"})


async def _remove(c: Client, s: Scene) -> httpx.Response:
    return await c.delete(f"/v1/teams/{s.team_id}/members/{s.target.user_id}")


async def _leave(c: Client, s: Scene) -> httpx.Response:
    return await c.post(f"/v1/teams/{s.team_id}/leave")


OPERATIONS = {
    "get": (_get, {"owner": 200, "admin": 200, "member": 200, "non-member": 403, "other-team": 403}),
    "rename": (_rename, {"owner": 204, "admin": 204, "member": 403, "non-member": 403, "other-team": 403}),
    "delete": (_delete, {"owner": 204, "admin": 403, "member": 403, "non-member": 403, "other-team": 403}),
    "members": (_members, {"owner": 200, "admin": 200, "member": 200, "non-member": 403, "other-team": 403}),
    "add-member": (_add, {"owner": 201, "admin": 201, "member": 403, "non-member": 403, "other-team": 403}),
    "set-role": (_role, {"owner": 204, "admin": 204, "member": 403, "non-member": 403, "other-team": 403}),
    "remove-member": (_remove, {"owner": 204, "admin": 204, "member": 403, "non-member": 403, "other-team": 403}),
    "leave": (_leave, {"owner": 403, "admin": 204, "member": 204, "non-member": 403, "other-team": 403}),
}

CASES = [(op, role, status) for op, (_, table) in OPERATIONS.items() for role, status in table.items()]


@pytest.mark.parametrize(("op", "role", "expected"), CASES, ids=[f"{o}-{r}" for o, r, _ in CASES])
async def test_team_role_matrix(platform: Platform, op: str, role: str, expected: int) -> None:
    scene = await build_scene(platform)
    caller = scene.callers[role]
    _PLATFORM[id(caller)] = platform
    action, _ = OPERATIONS[op]
    r = await action(caller, scene)
    assert r.status_code == expected, r.text
    if expected >= 400:
        assert r.json()["error"]["code"] == "forbidden"
    await _check_effect(op, expected, scene)


async def _check_effect(op: str, status: int, scene: Scene) -> None:
    """Successful mutations are visible; refused ones changed nothing."""
    owner = scene.callers["owner"]
    members = {m["user_id"]: m for m in (await owner.get(f"/v1/teams/{scene.team_id}/members")).json()} \
        if not (op == "delete" and status == 204) else {}
    if op == "delete":
        teams = [t["id"] for t in (await owner.get("/v1/teams")).json()]
        assert (scene.team_id in teams) == (status != 204)
    elif op == "rename":
        name = (await owner.get(f"/v1/teams/{scene.team_id}")).json()["team"]["name"]
        assert (name == "Renamed Team") == (status == 204)
    elif op == "set-role":
        assert members[scene.target.user_id]["role"] == ("admin" if status == 204 else "member")
    elif op == "remove-member":
        assert (scene.target.user_id in members) == (status != 204)
    elif op == "add-member":
        assert len(members) == (6 if status == 201 else 5)
    elif op == "get" and status == 200:
        assert len(members) == 5
