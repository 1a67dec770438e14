"""Platform-admin capsule and template routes against a live control plane and a real agent: they act on
capsules of every team, create in the platform team, produce platform templates, and are audited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from app.audit.models import AuditLog
from app.core import ids
from openapi.conformance import ConformanceRecorder
from tests.api.helpers import Client, Platform
from tests.capsules.conftest import Stack
from tests.capsules.helpers import new_capsule, run, wait_status

PLATFORM_TEAM = ids.encode(ids.TEAM, ids.ZERO_UUID)


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[Client]:
    client = Client(stack.url)
    client.http.cookies = stack.admin_cookies
    yield client
    await client.http.aclose()


async def _admin_wait(admin: Client, capsule_id: str, wanted: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await admin.get(f"/v1/admin/capsules/{capsule_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] == wanted:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{capsule_id} never became {wanted}: {body}")


async def test_admin_acts_on_capsules_of_any_team(admin: Client, live: Platform, stack: Stack, db: Any,
                                                  conformance: ConformanceRecorder) -> None:
    conformance.wrap(admin)
    user = conformance.wrap(await live.user())
    capsule_id = await new_capsule(user)

    listed = {c["id"]: c for c in (await admin.get("/v1/admin/capsules")).json()}
    assert listed[capsule_id]["team_id"] == user.team_id and listed[capsule_id]["status"] == "running"
    detail = (await admin.get(f"/v1/admin/capsules/{capsule_id}")).json()
    assert detail["id"] == capsule_id and detail["team_id"] == user.team_id

    base = f"/v1/admin/capsules/{capsule_id}"
    r = await admin.post(f"{base}/exec", json={"cmd": "/bin/sh", "args": ["-c", "echo from-admin; exit 4"]})
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "from-admin\n" and r.json()["exit_code"] == 4
    r = await admin.post(f"{base}/exec", json={"cmd": "/bin/sleep", "args": ["300"], "background": True,
                                               "tag": "sleeper"})
    assert r.status_code == 202 and r.json()["pid"] > 0 and r.json()["tag"] == "sleeper"
    processes = (await admin.get(f"{base}/processes")).json()["processes"]
    assert "sleeper" in [p["tag"] for p in processes]
    assert (await admin.delete(f"{base}/processes/sleeper")).status_code == 204
    assert (await admin.delete(f"{base}/processes/999999")).status_code == 404

    r = await admin.post(f"{base}/files/write", files={"file": ("upload", b"\x00admin\xff")},
                         data={"path": "/home/wrenn-user/a/b/admin.bin"})
    assert r.status_code == 204, r.text
    r = await admin.post(f"{base}/files/read", json={"path": "/home/wrenn-user/a/b/admin.bin"})
    assert r.status_code == 200 and r.content == b"\x00admin\xff"
    r = await admin.post(f"{base}/files/mkdir", json={"path": "/home/wrenn-user/newdir"})
    assert r.status_code == 200 and r.json()["entry"]["type"] == "directory"
    entries = (await admin.post(f"{base}/files/list", json={"path": "/home/wrenn-user", "depth": 1})).json()
    assert {"a", "newdir"} <= {e["name"] for e in entries["entries"]}
    assert (await admin.post(f"{base}/files/remove", json={"path": "/home/wrenn-user/newdir"})).status_code == 204
    r = await admin.post(f"{base}/files/read", json={"path": "/home/wrenn-user/newdir"})
    assert r.status_code == 404
    # the team sees what the admin wrote
    assert (await run(user, capsule_id, "cat /home/wrenn-user/a/b/admin.bin | wc -c"))["stdout"].strip() == "7"

    r = await admin.get(f"{base}/metrics", params={"range": "5m"})
    assert r.status_code == 200 and r.json()["sandbox_id"] == capsule_id and r.json()["range"] == "5m"

    # admin snapshot → a platform template, visible to every team; the name is then reserved for teams
    r = await admin.post(f"{base}/snapshot", json={"name": "admin-golden"})
    assert r.status_code == 201, r.text
    assert r.json()["platform"] is True and r.json()["type"] == "snapshot" and r.json()["size_bytes"] > 0
    seen = {t["name"]: t for t in (await user.get("/v1/snapshots")).json()}
    assert seen["admin-golden"]["platform"] is True
    r = await user.post("/v1/snapshots", json={"sandbox_id": capsule_id, "name": "admin-golden"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "name_reserved"
    # overwriting the platform template of that name
    await run(user, capsule_id, "echo second > /home/wrenn-user/gen.txt")
    r = await admin.post(f"{base}/snapshot", json={"name": "admin-golden"})
    assert r.status_code == 201, r.text
    child = await new_capsule(user, template="admin-golden")
    assert (await run(user, child, "cat /home/wrenn-user/gen.txt"))["stdout"] == "second\n"
    r = await admin.post(f"{base}/snapshot", json={"name": "minimal"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "name_reserved"
    r = await admin.post(f"{base}/snapshot", json={"name": "bad/name"})
    assert r.status_code == 400

    # destroy across teams: 204, and the team sees it stopped
    r = await admin.delete(base)
    assert r.status_code == 204 and r.content == b""
    await wait_status(user, capsule_id, "stopped")
    r = await admin.post(f"{base}/exec", json={"cmd": "/bin/true"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"

    async with db() as session:
        rows = list(await session.scalars(
            select(AuditLog).where(AuditLog.resource_id == capsule_id, AuditLog.scope == "admin")
            .order_by(AuditLog.created_at)))
    actions = [(a.action, a.status) for a in rows]
    assert ("exec", "success") in actions and ("kill_process", "success") in actions
    assert ("kill_process", "error") in actions  # the unknown pid
    assert {"file_write", "mkdir", "remove", "destroy"} <= {a for a, _ in actions}
    assert all(a.team_id == ids.decode(ids.TEAM, user.team_id) and a.actor_type == "user" for a in rows)
    async with db() as session:
        snaps = list(await session.scalars(
            select(AuditLog).where(AuditLog.resource_id == "admin-golden", AuditLog.action == "create")))
    assert len(snaps) == 2 and all(a.scope == "admin" and a.team_id == ids.ZERO_UUID for a in snaps)

    await user.delete(f"/v1/capsules/{child}")
    await wait_status(user, child, "stopped")
    assert (await admin.delete("/v1/admin/templates/admin-golden")).status_code == 204


async def test_admin_create_in_platform_team(admin: Client, sdk: Client, conformance: ConformanceRecorder) -> None:
    conformance.wrap(admin)
    r = await admin.post("/v1/admin/capsules", json={})
    assert r.status_code == 201, r.text
    capsule = r.json()
    assert capsule["status"] == "starting" and capsule["team_id"] == PLATFORM_TEAM
    await _admin_wait(admin, capsule["id"], "running")
    assert capsule["id"] not in [c["id"] for c in (await sdk.get("/v1/capsules")).json()]
    assert (await sdk.get(f"/v1/capsules/{capsule['id']}")).status_code == 404
    listed = {c["id"]: c for c in (await admin.get("/v1/admin/capsules")).json()}
    assert listed[capsule["id"]]["team_id"] == PLATFORM_TEAM
    assert (await admin.delete(f"/v1/admin/capsules/{capsule['id']}")).status_code == 204
    await _admin_wait(admin, capsule["id"], "stopped")
    assert (await admin.delete(f"/v1/admin/capsules/{capsule['id']}")).status_code == 204  # idempotent
    assert (await admin.get("/v1/admin/capsules/cl-" + "0" * 24 + "9")).status_code == 404


async def test_admin_routes_need_a_platform_admin(live: Platform, sdk: Client, stack: Stack) -> None:
    user = await live.user()
    capsule_id = "cl-" + "0" * 24 + "1"
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/v1/admin/capsules", {}), ("POST", "/v1/admin/capsules", {"json": {}}),
        ("GET", f"/v1/admin/capsules/{capsule_id}", {}), ("DELETE", f"/v1/admin/capsules/{capsule_id}", {}),
        ("POST", f"/v1/admin/capsules/{capsule_id}/snapshot", {"json": {"name": "x"}}),
        ("POST", f"/v1/admin/capsules/{capsule_id}/exec", {"json": {"cmd": "/bin/true"}}),
        ("GET", f"/v1/admin/capsules/{capsule_id}/metrics", {}),
        ("GET", f"/v1/admin/capsules/{capsule_id}/processes", {}),
        ("DELETE", f"/v1/admin/capsules/{capsule_id}/processes/1", {}),
        ("POST", f"/v1/admin/capsules/{capsule_id}/files/read", {"json": {"path": "/etc/hostname"}}),
        ("POST", f"/v1/admin/capsules/{capsule_id}/files/list", {"json": {"path": "/"}}),
        ("POST", f"/v1/admin/capsules/{capsule_id}/files/mkdir", {"json": {"path": "/x"}}),
        ("POST", f"/v1/admin/capsules/{capsule_id}/files/remove", {"json": {"path": "/x"}}),
        ("GET", "/v1/admin/templates", {}), ("DELETE", "/v1/admin/templates/minimal", {}),
    ]
    for method, path, kw in calls:
        r = await user.request(method, path, **kw)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (method, path, r.text)
        r = await sdk.request(method, path, **kw)  # an API key is not a session
        assert r.status_code == 401, (method, path, r.text)


async def test_admin_templates(admin: Client, sdk: Client, live: Platform, stack: Stack,
                               conformance: ConformanceRecorder) -> None:
    conformance.wrap(admin)
    conformance.wrap(sdk)
    user = conformance.wrap(await live.user())
    source = await new_capsule(user)
    r = await user.post("/v1/snapshots", json={"sandbox_id": source, "name": "team-snap"})
    assert r.status_code == 201, r.text
    r = await admin.post(f"/v1/admin/capsules/{source}/snapshot", json={"name": "platform-snap"})
    assert r.status_code == 201, r.text

    templates = (await admin.get("/v1/admin/templates")).json()
    by_key = {(t["name"], t["team_id"]): t for t in templates}
    minimal = by_key[("minimal", PLATFORM_TEAM)]
    assert minimal["platform"] is True and minimal["origin"] == "platform" and minimal["protected"] is True
    assert minimal["size_bytes"] > 0 and minimal["team_name"] == "Platform"
    team_snap = by_key[("team-snap", user.team_id)]
    assert team_snap["platform"] is False and team_snap["origin"] == "team" and team_snap["size_bytes"] > 0
    assert team_snap["created_by"] == user.user_id and team_snap["created_by_email"] == user.email
    assert team_snap["host_id"] == stack.host_id
    platform_snap = by_key[("platform-snap", PLATFORM_TEAM)]
    assert platform_snap["platform"] is True and platform_snap["type"] == "snapshot"

    r = await admin.delete("/v1/admin/templates/minimal")
    assert r.status_code == 403
    r = await admin.delete("/v1/admin/templates/nothing-here")
    assert r.status_code == 404
    r = await admin.delete("/v1/admin/templates/team-snap")  # a team's template is not the admin route's
    assert r.status_code == 404

    # in use by a live capsule (any team): refused
    child = await new_capsule(sdk, template="platform-snap")
    r = await admin.delete("/v1/admin/templates/platform-snap")
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert (await sdk.delete(f"/v1/capsules/{child}")).status_code == 202
    await wait_status(sdk, child, "stopped")
    r = await admin.delete("/v1/admin/templates/platform-snap")
    assert r.status_code == 204, r.text
    assert "platform-snap" not in [t["name"] for t in (await admin.get("/v1/admin/templates")).json()]
    r = await sdk.post("/v1/capsules", json={"template": "platform-snap"})
    assert r.status_code == 404

    await user.delete(f"/v1/capsules/{source}")
