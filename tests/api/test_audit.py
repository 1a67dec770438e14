"""Audit log: coverage of security-relevant actions, the spec's shape, scope visibility, the admin view,
parameter validation, and keyset paging that neither skips nor repeats while entries keep arriving."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app.core import ids
from app.core.config import Settings
from tests.api.helpers import PASSWORD, Client, Platform

ENTRY_KEYS = {"id", "actor_type", "resource_type", "action", "scope", "status", "metadata", "created_at"}


async def _entries(c: Client, path: str = "/v1/audit-logs", **params: Any) -> list[dict[str, Any]]:
    r = await c.get(path, params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"entries", "next_cursor"}
    return list(body["entries"])


async def test_actions_are_recorded_with_actor_ip_outcome_and_spec_shape(platform: Platform) -> None:
    admin = await platform.user()
    owner = await platform.user()
    key = (await owner.post("/v1/api-keys", json={"name": "ci"})).json()
    assert (await owner.delete(f"/v1/api-keys/{key['id']}")).status_code == 204
    member = await platform.user()
    r = await owner.post(f"/v1/teams/{owner.team_id}/members", json={"email": member.email})
    assert r.status_code == 201, r.text
    r = await owner.patch(f"/v1/teams/{owner.team_id}/members/{member.user_id}", json={"role": "admin"})
    assert r.status_code == 204, r.text
    r = await platform.client().post("/v1/auth/login", json={"email": owner.email, "password": "wrong password!"})
    assert r.status_code == 401
    again = await platform.login(owner.email, PASSWORD)
    assert (await again.post("/v1/auth/logout")).status_code == 204
    r = await admin.put(f"/v1/admin/teams/{owner.team_id}/byoc", json={"byoc": True})
    assert r.status_code == 204

    entries = await _entries(owner)
    for e in entries:
        assert set(e) >= ENTRY_KEYS and e["id"].startswith("log-") and e["created_at"].endswith("Z")
        assert e["status"] in ("success", "failure") and e["actor_type"] in ("user", "api_key", "system")
    seen = {(e["resource_type"], e["action"]) for e in entries}
    assert {("api_key", "create"), ("api_key", "delete"), ("member", "add"), ("member", "role_change"),
            ("session", "login"), ("session", "logout")} <= seen
    created = next(e for e in entries if (e["resource_type"], e["action"]) == ("api_key", "create"))
    assert created["actor_id"] == owner.user_id and created["actor_name"] == owner.email
    assert created["resource_id"] == key["id"] and created["metadata"] == {"name": "ci"}
    assert created["ip_address"].startswith("10.0.0.")
    # Ordered newest first.
    assert [e["created_at"] for e in entries] == sorted((e["created_at"] for e in entries), reverse=True)

    # Failed logins and admin actions are in the platform (admin) view, with outcome and IP.
    platform_entries = await _entries(admin, "/v1/admin/audit-logs", limit=200)
    failed = [e for e in platform_entries if (e["resource_type"], e["action"]) == ("session", "login")
              and e["status"] == "failure"]
    assert failed and failed[0]["metadata"] == {"email": owner.email, "reason": "bad_credentials"}
    assert failed[0]["ip_address"] and failed[0]["scope"] == "admin"
    assert any(e["action"] == "enable_byoc" or e["resource_type"] == "team" and "byoc" in e["action"]
               for e in platform_entries)
    # The admin view spans teams; team_id narrows it.
    assert {e["team_id"] for e in platform_entries} >= {owner.team_id}
    only = await _entries(admin, "/v1/admin/audit-logs", team_id=owner.team_id, limit=200)
    assert only and {e["team_id"] for e in only} == {owner.team_id}


async def test_members_see_team_scope_owners_and_admins_see_admin_scope_too(platform: Platform) -> None:
    await platform.user()
    owner = await platform.user()
    member = await platform.user()
    r = await owner.post(f"/v1/teams/{owner.team_id}/members", json={"email": member.email})
    assert r.status_code == 201
    r = await owner.patch(f"/v1/teams/{owner.team_id}/members/{member.user_id}", json={"role": "member"})
    assert r.status_code == 204
    r = await member.post("/v1/auth/switch-team", json={"team_id": owner.team_id})
    assert r.status_code == 200, r.text
    assert (await owner.post("/v1/api-keys", json={"name": "team scope"})).status_code == 201
    owner_view = await _entries(owner)
    member_view = await _entries(member)
    assert any(e["scope"] == "admin" for e in owner_view)
    assert member_view and all(e["scope"] == "team" for e in member_view)
    assert {e["id"] for e in member_view} < {e["id"] for e in owner_view}
    # Not a platform admin → 403 on the admin view; an API key is not a session → 401.
    assert (await owner.get("/v1/admin/audit-logs")).status_code == 403
    key = (await owner.post("/v1/api-keys", json={})).json()["key"]
    assert (await platform.client().get("/v1/audit-logs", headers={"X-API-Key": key})).status_code == 401


async def test_parameters_are_validated(platform: Platform) -> None:
    owner = await platform.user()
    for params, field in (({"limit": 0}, "limit"), ({"limit": "x"}, "limit"), ({"before": "yesterday"}, "before"),
                          ({"before": "2026-01-01T00:00:00"}, "before"),
                          ({"before": "2026-01-01T00:00:00Z", "before_id": "usr-1"}, "before_id"),
                          ({"before_id": ids.encode(ids.AUDIT, uuid.uuid4())}, "before_id")):
        r = await owner.get("/v1/audit-logs", params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["message"].startswith(field), r.json()
    r = await owner.get("/v1/audit-logs", params={"limit": 5000})
    assert r.status_code == 200  # clamped to 200


async def test_paging_neither_skips_nor_repeats_while_500_entries_arrive(
    platform: Platform, settings: Settings
) -> None:
    owner = await platform.user()
    team = ids.decode(ids.TEAM, owner.team_id)
    conn = await asyncpg.connect(settings.database_url)
    writer = await asyncpg.connect(settings.database_url)
    try:
        # 400 existing entries over a minute of history, many sharing one timestamp (ties broken by id).
        base = datetime.now(UTC) - timedelta(minutes=5)
        rows = [(uuid.uuid4(), team, base + timedelta(milliseconds=(i // 7) * 150, microseconds=i % 3))
                for i in range(400)]
        await conn.executemany(
            "INSERT INTO audit_logs (id, team_id, actor_type, resource_type, action, created_at) "
            "VALUES ($1, $2, 'system', 'test', 'seed', $3)", rows)
        before_paging = {ids.encode(ids.AUDIT, r[0]) for r in rows}
        existing = {e["id"] for e in await _entries(owner, limit=200)} - before_paging  # signup etc.

        arrived: list[str] = []

        async def arrive() -> None:
            for i in range(500):
                row_id = uuid.uuid4()
                await writer.execute(
                    "INSERT INTO audit_logs (id, team_id, actor_type, resource_type, action, created_at) "
                    "VALUES ($1, $2, 'system', 'test', 'new', now())", row_id, team)
                arrived.append(ids.encode(ids.AUDIT, row_id))
                if i % 10 == 0:
                    await asyncio.sleep(0)

        seen: list[str] = []
        progress: list[int] = []  # entries arrived so far, after each page
        params: dict[str, Any] = {"limit": 9}
        task = asyncio.create_task(arrive())
        while True:
            r = await owner.get("/v1/audit-logs", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            seen += [e["id"] for e in body["entries"]]
            progress.append(len(arrived))
            if body["next_cursor"] is None:
                break
            params = {"limit": 9, **body["next_cursor"]}
            await asyncio.sleep(0)
        await task
    finally:
        await conn.close()
        await writer.close()
    assert len(arrived) == 500
    assert len({n for n in progress if 0 < n < 500}) > 3, "entries must arrive while paging"
    assert len(seen) == len(set(seen)), "an entry was repeated"
    assert before_paging | existing <= set(seen), "an entry was skipped"
    assert set(seen) <= before_paging | existing | set(arrived)
