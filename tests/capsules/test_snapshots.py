"""Snapshots against a live control plane and a real agent: files survive into new capsules, name rules,
overwrite, deletion, and the events and audit entries they leave."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson
from sqlalchemy import select

from app.audit.models import AuditLog
from app.core import ids
from app.hostagent import templates as agent_templates
from app.snapshots.models import Template
from openapi.conformance import ConformanceRecorder
from tests.api.helpers import Client, Platform
from tests.capsules.conftest import Stack
from tests.capsules.helpers import new_capsule, run, wait_status


async def _events(stack: Stack, name: str) -> list[dict[str, Any]]:
    from redis.asyncio import Redis

    redis = Redis.from_url(stack.settings.redis_url)
    try:
        entries: list[Any] = list(await redis.xrange("wrenn:events") or [])
    finally:
        await redis.aclose()
    found = [orjson.loads(fields[b"payload"]) for _, fields in entries]
    return [e for e in found if e["event"] == name]


async def _snapshot(client: Client, capsule_id: str, name: str | None = None, **params: Any) -> Any:
    body: dict[str, Any] = {"sandbox_id": capsule_id}
    if name is not None:
        body["name"] = name
    return await client.post("/v1/snapshots", json=body, params=params or None)


def _error(r: Any) -> str:
    return str(r.json()["error"]["code"])


async def test_snapshot_roundtrip_overwrite_and_delete(sdk: Client, stack: Stack, db: Any,
                                                       conformance: ConformanceRecorder) -> None:
    conformance.wrap(sdk)
    source = await new_capsule(sdk)
    await run(sdk, source, "echo version-1 > /home/wrenn-user/marker.txt")

    r = await _snapshot(sdk, source, "snap-a")
    assert r.status_code == 201, r.text
    template = r.json()
    assert template["name"] == "snap-a" and template["type"] == "snapshot" and template["platform"] is False
    assert template["size_bytes"] > 0 and template["vcpus"] == 1 and template["memory_mb"] == 512
    assert template["created_at"].endswith("Z")
    assert "host_id" not in template["metadata"] and all(isinstance(v, str) for v in template["metadata"].values())
    # a live snapshot: the source keeps running
    assert (await sdk.get(f"/v1/capsules/{source}")).json()["status"] == "running"

    listed = (await sdk.get("/v1/snapshots")).json()
    by_name = {t["name"]: t for t in listed}
    assert by_name["snap-a"]["platform"] is False and by_name["snap-a"]["size_bytes"] > 0
    assert by_name["minimal"]["platform"] is True and by_name["minimal"]["type"] == "base"
    assert by_name["minimal"]["size_bytes"] > 0  # asked of the host (GetTemplateSize) and cached
    assert [t["name"] for t in (await sdk.get("/v1/snapshots", params={"type": "snapshot"})).json()] == ["snap-a"]
    assert "snap-a" not in [t["name"] for t in (await sdk.get("/v1/snapshots", params={"type": "base"})).json()]
    assert (await sdk.get("/v1/snapshots", params={"type": "bogus"})).status_code == 400

    # a capsule made from the snapshot has the file, the same user, and the snapshot's size
    child = await new_capsule(sdk, template="snap-a", vcpus=2, memory_mb=1024)
    info = (await sdk.get(f"/v1/capsules/{child}")).json()
    assert info["template"] == "snap-a" and info["vcpus"] == 1 and info["memory_mb"] == 512
    result = await run(sdk, child, "cat /home/wrenn-user/marker.txt; whoami")
    assert result["stdout"] == "version-1\nwrenn-user\n"

    # the same name again: 409 unless overwrite=true
    await run(sdk, source, "echo version-2 > /home/wrenn-user/marker.txt")
    r = await _snapshot(sdk, source, "snap-a")
    assert r.status_code == 409 and _error(r) == "template_name_taken"
    async with db() as session:
        old_id = (await session.scalar(select(Template).where(Template.name == "snap-a"))).id
    team_uuid = ids.decode(ids.TEAM, stack.team_id)
    old_dir = agent_templates.default_templates_dir() / str(team_uuid) / str(old_id)
    assert old_dir.is_dir()
    r = await _snapshot(sdk, source, "snap-a", overwrite="true")
    assert r.status_code == 201, r.text
    async with db() as session:
        rows = list(await session.scalars(select(Template).where(Template.name == "snap-a")))
    assert len(rows) == 1 and rows[0].id != old_id
    assert rows[0].metadata_["host_id"] == stack.host_id
    newer = await new_capsule(sdk, template="snap-a")
    assert (await run(sdk, newer, "cat /home/wrenn-user/marker.txt"))["stdout"] == "version-2\n"
    # the old files are the lower layer of `child`, which still runs: they stay until it is gone
    await asyncio.sleep(2.5)
    assert old_dir.is_dir()
    assert (await run(sdk, child, "cat /home/wrenn-user/marker.txt; ls /usr/bin | wc -l"))["stdout"].startswith(
        "version-1\n")
    assert (await sdk.delete(f"/v1/capsules/{child}")).status_code == 202
    await wait_status(sdk, child, "stopped")
    deadline = time.monotonic() + 15
    for _ in range(150):  # removed in the background once no capsule uses them
        if not old_dir.exists() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert not old_dir.exists(), "the overwritten template's files are deleted on the host"

    # delete: gone from the list and no longer usable; the files go once `newer` (built on them) is gone
    new_dir = agent_templates.default_templates_dir() / str(team_uuid) / str(rows[0].id)
    r = await sdk.delete("/v1/snapshots/snap-a")
    assert r.status_code == 204, r.text
    assert "snap-a" not in [t["name"] for t in (await sdk.get("/v1/snapshots")).json()]
    assert new_dir.is_dir() and (await run(sdk, newer, "cat /home/wrenn-user/marker.txt"))["exit_code"] == 0
    assert (await sdk.delete(f"/v1/capsules/{newer}")).status_code == 202
    await wait_status(sdk, newer, "stopped")
    for _ in range(150):
        if not new_dir.exists():
            break
        await asyncio.sleep(0.1)
    assert not new_dir.exists()
    r = await sdk.post("/v1/capsules", json={"template": "snap-a"})
    assert r.status_code == 404 and _error(r) == "not_found"
    r = await sdk.delete("/v1/snapshots/snap-a")
    assert r.status_code == 404 and _error(r) == "not_found"

    created = [e for e in await _events(stack, "template.snapshot.create") if e["resource"]["id"] == "snap-a"]
    assert len(created) == 2 and all(e["outcome"] == "success" and e["actor"]["type"] == "api_key" for e in created)
    assert created[0]["resource"]["type"] == "snapshot" and created[0]["team_id"] == stack.team_id
    deleted = [e for e in await _events(stack, "template.snapshot.delete") if e["resource"]["id"] == "snap-a"]
    assert len(deleted) == 1 and deleted[0]["outcome"] == "success"
    async with db() as session:
        actions = [(a.action, a.status, a.scope) for a in await session.scalars(
            select(AuditLog).where(AuditLog.resource_type == "snapshot", AuditLog.resource_id == "snap-a")
            .order_by(AuditLog.created_at))]
    assert actions == [("create", "success", "team"), ("create", "success", "team"), ("delete", "warning", "team")]

    await sdk.delete(f"/v1/capsules/{source}")


async def test_delete_without_users_removes_files_at_once(sdk: Client, stack: Stack, db: Any) -> None:
    source = await new_capsule(sdk)
    r = await _snapshot(sdk, source, "short-lived")
    assert r.status_code == 201, r.text
    async with db() as session:
        template = await session.scalar(select(Template).where(Template.name == "short-lived"))
    directory = agent_templates.default_templates_dir() / str(template.team_id) / str(template.id)
    assert directory.is_dir()
    assert (await sdk.delete("/v1/snapshots/short-lived")).status_code == 204
    assert not directory.exists()
    await sdk.delete(f"/v1/capsules/{source}")


async def test_snapshot_rules(sdk: Client, stack: Stack, live: Platform, conformance: ConformanceRecorder) -> None:
    conformance.wrap(sdk)
    capsule_id = await new_capsule(sdk)

    r = await _snapshot(sdk, capsule_id)  # default name
    assert r.status_code == 201, r.text
    assert re.fullmatch(r"template-[0-9a-f]{8}", r.json()["name"])

    for bad in ("bad/name", ".hidden", "", "x" * 65, "sp ace"):
        r = await _snapshot(sdk, capsule_id, bad)
        if bad == "":  # empty means "choose one for me"
            assert r.status_code == 201, r.text
            continue
        assert r.status_code == 400 and _error(r) == "invalid_request", (bad, r.text)

    r = await _snapshot(sdk, capsule_id, "minimal")
    assert r.status_code == 409 and _error(r) == "name_reserved"
    r = await _snapshot(sdk, capsule_id, "minimal", overwrite="true")
    assert r.status_code == 409 and _error(r) == "name_reserved"

    r = await _snapshot(sdk, "cl-" + "0" * 24 + "1", "ghost")
    assert r.status_code == 404 and _error(r) == "not_found"
    r = await _snapshot(sdk, "not-an-id", "ghost")
    assert r.status_code == 400

    # another team cannot see (404) this capsule, nor delete this team's snapshots
    other = conformance.wrap(await live.user())
    r = await _snapshot(other, capsule_id, "stolen")
    assert r.status_code == 404 and _error(r) == "not_found"
    assert (await sdk.post("/v1/snapshots", json={"sandbox_id": capsule_id, "name": "mine"})).status_code == 201
    r = await other.delete("/v1/snapshots/mine")
    assert r.status_code == 404
    assert "mine" not in [t["name"] for t in (await other.get("/v1/snapshots")).json()]
    r = await other.post("/v1/capsules", json={"template": "mine"})
    assert r.status_code == 404
    # the other team may use the same name for its own snapshot (names are per team)
    theirs = await new_capsule(other)
    r = await _snapshot(other, theirs, "mine")
    assert r.status_code == 201 and r.json()["platform"] is False, r.text

    # platform templates cannot be deleted by a team
    r = await sdk.delete("/v1/snapshots/minimal")
    assert r.status_code == 403 and _error(r) == "forbidden"

    # a paused capsule cannot be snapshotted (spec: running only)
    r = await sdk.post(f"/v1/capsules/{capsule_id}/pause")
    assert r.status_code == 202
    await wait_status(sdk, capsule_id, "paused")
    r = await _snapshot(sdk, capsule_id, "while-paused")
    assert r.status_code == 409 and _error(r) == "invalid_state"
    assert "while-paused" not in [t["name"] for t in (await sdk.get("/v1/snapshots")).json()]

    for client, cid in ((sdk, capsule_id), (other, theirs)):
        await client.delete(f"/v1/capsules/{cid}")
