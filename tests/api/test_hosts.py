"""Host API: permissions, registration, token rotation, heartbeat, sandbox events, tags, deletion."""

from __future__ import annotations

import uuid

import asyncpg
import jwt
import pytest
from cryptography import x509

from app.core import ids
from app.core.config import Settings
from tests.api.helpers import Client, Platform

SPEC = {"arch": "amd64", "cpu_cores": 8, "memory_mb": 16384, "disk_gb": 100, "address": "127.0.0.1:50999"}


async def _create(admin: Client, **body: str) -> dict:
    r = await admin.post("/v1/hosts", json={"type": "regular", **body})
    assert r.status_code == 201, r.text
    return r.json()


async def _register(client: Client, token: str, **over: object) -> dict:
    r = await client.post("/v1/hosts/register", json={"token": token, **SPEC, **over})
    assert r.status_code == 201, r.text
    return r.json()


async def test_register_heartbeat_and_refresh_rotation(platform: Platform, settings: Settings) -> None:
    admin = await platform.user()
    created = await _create(admin, provider="hetzner", availability_zone="eu")
    host, token = created["host"], created["registration_token"]
    assert host["status"] == "pending" and len(token) == 64 and host["type"] == "regular"
    agent = platform.client()
    reg = await _register(agent, token)
    assert reg["host"]["status"] == "online" and reg["host"]["cpu_cores"] == 8
    claims = jwt.decode(reg["token"], options={"verify_signature": False})
    assert claims["typ"] == "host" and claims["host_id"] == host["id"] == claims["sub"]
    cert = x509.load_pem_x509_certificate(reg["cert_pem"].encode())
    assert cert.subject.rfc4514_string() == f"CN={host['id']}"
    assert "BEGIN EC PRIVATE KEY" in reg["key_pem"] and "BEGIN CERTIFICATE" in reg["ca_cert_pem"]

    # The registration token is single-use.
    r = await agent.post("/v1/hosts/register", json={"token": token, **SPEC})
    assert r.status_code == 401

    hb = f"/v1/hosts/{host['id']}/heartbeat"
    assert (await agent.post(hb, headers={"X-Host-Token": reg["token"]})).status_code == 204
    assert (await agent.post(hb)).status_code == 401
    assert (await agent.post(hb, headers={"X-Host-Token": "garbage"})).status_code == 401
    other = await _register(agent, (await _create(admin))["registration_token"])
    assert (await agent.post(hb, headers={"X-Host-Token": other["token"]})).status_code == 403
    # A user-style JWT signed with the same secret but the wrong type is refused.
    forged = jwt.encode({"typ": "user", "host_id": host["id"], "exp": 2**33}, settings.jwt_secret, "HS256")
    assert (await agent.post(hb, headers={"X-Host-Token": forged})).status_code == 401

    # Refresh rotates: the new token works once, the old one is refused.
    r = await agent.post("/v1/hosts/auth/refresh", json={"refresh_token": reg["refresh_token"]})
    assert r.status_code == 200
    rotated = r.json()
    assert rotated["refresh_token"] != reg["refresh_token"] and rotated["cert_pem"] != reg["cert_pem"]
    r = await agent.post("/v1/hosts/auth/refresh", json={"refresh_token": reg["refresh_token"]})
    assert r.status_code == 401
    assert (await agent.post(hb, headers={"X-Host-Token": rotated["token"]})).status_code == 204

    conn = await asyncpg.connect(settings.database_url)
    try:
        stored = await conn.fetch("SELECT token_hash FROM host_refresh_tokens")
        assert all(rotated["refresh_token"] != row["token_hash"] for row in stored)
    finally:
        await conn.close()


async def test_regular_hosts_are_admin_only_and_byoc_needs_a_byoc_team(platform: Platform) -> None:
    admin = await platform.user()
    owner = await platform.user()
    r = await owner.post("/v1/hosts", json={"type": "regular"})
    assert r.status_code == 403
    r = await owner.post("/v1/hosts", json={"type": "byoc", "team_id": owner.team_id})
    assert r.status_code == 403  # BYOC not enabled for the team
    r = await owner.post("/v1/hosts", json={"type": "byoc"})
    assert r.status_code == 400 and "team_id" in r.json()["error"]["message"]
    assert (await admin.put(f"/v1/admin/teams/{owner.team_id}/byoc", json={"byoc": True})).status_code == 204
    r = await owner.post("/v1/hosts", json={"type": "byoc", "team_id": owner.team_id})
    assert r.status_code == 201
    byoc = r.json()["host"]
    assert byoc["team_id"] == owner.team_id

    # A plain member of the team may see but not manage; another team sees nothing (404, not 403).
    member = await platform.user()
    assert (await owner.post(f"/v1/teams/{owner.team_id}/members", json={"email": member.email})).status_code == 201
    assert (await member.post("/v1/auth/switch-team", json={"team_id": owner.team_id})).status_code == 200
    assert (await member.get(f"/v1/hosts/{byoc['id']}")).status_code == 200
    assert (await member.post(f"/v1/hosts/{byoc['id']}/token")).status_code == 403
    assert (await member.delete(f"/v1/hosts/{byoc['id']}")).status_code == 403
    stranger = await platform.user()
    for method, path in [("GET", ""), ("GET", "/tags"), ("DELETE", ""), ("GET", "/delete-preview"), ("POST", "/token")]:
        r = await stranger.request(method, f"/v1/hosts/{byoc['id']}{path}")
        assert r.status_code == 404, (method, path, r.text)
    assert [h["id"] for h in (await stranger.get("/v1/hosts")).json()] == []
    assert [h["id"] for h in (await member.get("/v1/hosts")).json()] == [byoc["id"]]
    regular = await _create(admin)
    assert {h["id"] for h in (await admin.get("/v1/hosts")).json()} == {byoc["id"], regular["host"]["id"]}

    # Regenerating a token is for pending hosts only.
    r = await owner.post(f"/v1/hosts/{byoc['id']}/token")
    assert r.status_code == 201 and len(r.json()["registration_token"]) == 64
    await _register(platform.client(), r.json()["registration_token"])
    assert (await owner.post(f"/v1/hosts/{byoc['id']}/token")).status_code == 409


async def test_tags(platform: Platform) -> None:
    admin = await platform.user()
    host = (await _create(admin))["host"]["id"]
    for tag in ("gpu", "eu", "gpu"):
        assert (await admin.post(f"/v1/hosts/{host}/tags", json={"tag": tag})).status_code == 204
    assert (await admin.get(f"/v1/hosts/{host}/tags")).json() == ["eu", "gpu"]
    assert (await admin.post(f"/v1/hosts/{host}/tags", json={"tag": "../bad"})).status_code == 400
    assert (await admin.delete(f"/v1/hosts/{host}/tags/gpu")).status_code == 204
    assert (await admin.get(f"/v1/hosts/{host}/tags")).json() == ["eu"]


async def _insert_capsule(settings: Settings, host_ref: str, team_ref: str, status: str) -> str:
    capsule_id = uuid.uuid4()
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            "INSERT INTO sandboxes (id, team_id, host_id, status) VALUES ($1, $2, $3, $4)",
            capsule_id, ids.decode(ids.TEAM, team_ref), ids.decode(ids.HOST, host_ref), status)
    finally:
        await conn.close()
    return ids.encode(ids.CAPSULE, capsule_id)


async def _status(settings: Settings, capsule_ref: str) -> str:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return str(await conn.fetchval("SELECT status FROM sandboxes WHERE id = $1",
                                       ids.decode(ids.CAPSULE, capsule_ref)))
    finally:
        await conn.close()


async def test_delete_refuses_with_active_capsules_unless_forced(platform: Platform, settings: Settings) -> None:
    admin = await platform.user()
    host = (await _create(admin))["host"]["id"]  # never registered: nothing to contact
    running = await _insert_capsule(settings, host, admin.team_id, "running")
    done = await _insert_capsule(settings, host, admin.team_id, "stopped")
    preview = (await admin.get(f"/v1/hosts/{host}/delete-preview")).json()
    assert preview["sandbox_ids"] == [running] and preview["host"]["id"] == host
    r = await admin.delete(f"/v1/hosts/{host}")
    assert r.status_code == 409
    body = r.json()
    assert body["error"]["code"] == "host_has_sandboxes"
    assert body["error"]["sandbox_ids"] == [running] == body["sandbox_ids"]
    assert (await admin.get(f"/v1/hosts/{host}")).status_code == 200
    assert (await admin.delete(f"/v1/hosts/{host}?force=true")).status_code == 204
    assert (await admin.get(f"/v1/hosts/{host}")).status_code == 404
    assert await _status(settings, running) == "stopped" and await _status(settings, done) == "stopped"


async def test_heartbeat_after_delete_is_404(platform: Platform) -> None:
    admin = await platform.user()
    created = await _create(admin)
    reg = await _register(platform.client(), created["registration_token"])
    host = created["host"]["id"]
    assert (await admin.delete(f"/v1/hosts/{host}")).status_code == 204
    r = await platform.client().post(f"/v1/hosts/{host}/heartbeat", headers={"X-Host-Token": reg["token"]})
    assert r.status_code == 404
    r = await platform.client().post("/v1/hosts/auth/refresh", json={"refresh_token": reg["refresh_token"]})
    assert r.status_code == 401


@pytest.mark.parametrize(("event", "before", "after"), [
    ("sandbox.auto_paused", "running", "paused"),
    ("sandbox.stopped", "running", "stopped"),
    ("sandbox.error", "starting", "error"),
    ("sandbox.error", "pausing", "running"),
    ("sandbox.something_new", "running", "running"),
])
async def test_sandbox_events_update_state_and_stream(platform: Platform, settings: Settings, event: str,
                                                       before: str, after: str) -> None:
    admin = await platform.user()
    created = await _create(admin)
    host = created["host"]["id"]
    reg = await _register(platform.client(), created["registration_token"])
    capsule = await _insert_capsule(settings, host, admin.team_id, before)
    agent = platform.client(headers={"X-Host-Token": reg["token"]})
    r = await agent.post("/v1/hosts/sandbox-events", json={"event": event, "sandbox_id": capsule, "host_id": host,
                                                            "timestamp": 0})
    assert r.status_code == 204
    assert await _status(settings, capsule) == after


async def test_sandbox_events_are_checked(platform: Platform, settings: Settings) -> None:
    admin = await platform.user()
    a, b = await _create(admin), await _create(admin)
    reg_a = await _register(platform.client(), a["registration_token"])
    capsule_on_b = await _insert_capsule(settings, b["host"]["id"], admin.team_id, "running")
    agent = platform.client(headers={"X-Host-Token": reg_a["token"]})
    r = await agent.post("/v1/hosts/sandbox-events", json={"event": "sandbox.stopped", "sandbox_id": capsule_on_b})
    assert r.status_code == 400 and "host_id" in r.json()["error"]["message"]
    r = await agent.post("/v1/hosts/sandbox-events",
                         json={"event": "sandbox.stopped", "sandbox_id": capsule_on_b, "host_id": b["host"]["id"]})
    assert r.status_code == 403
    # Host A cannot stop a capsule that lives on host B, even naming itself.
    r = await agent.post("/v1/hosts/sandbox-events",
                         json={"event": "sandbox.stopped", "sandbox_id": capsule_on_b, "host_id": a["host"]["id"]})
    assert r.status_code == 204
    assert await _status(settings, capsule_on_b) == "running"
    r = await platform.client().post("/v1/hosts/sandbox-events", json={})
    assert r.status_code == 401
