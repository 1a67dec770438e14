"""Host monitor with a real agent process: kill -9 → unreachable + missing; restart → reconciled."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from tests.api.helpers import Client
from tests.capsules.conftest import Stack
from tests.capsules.helpers import new_capsule, run, wait_status


async def _host_status(stack: Stack) -> str:
    async with httpx.AsyncClient(base_url=stack.url, cookies=stack.admin_cookies) as admin:
        return str((await admin.get(f"/v1/hosts/{stack.host_id}")).json()["status"])


async def _wait_host(stack: Stack, wanted: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await _host_status(stack) == wanted:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"host never became {wanted}")


async def test_killed_agent_marks_host_unreachable_then_reconciles(sdk: Client, stack: Stack) -> None:
    survivor = await new_capsule(sdk)
    assert (await run(sdk, survivor, "echo ok"))["stdout"] == "ok\n"
    # An exec in flight when the agent dies gets a clean error envelope, not a hang or a 500.
    in_flight = asyncio.create_task(sdk.post(f"/v1/capsules/{survivor}/exec",
                                             json={"cmd": "/bin/sh", "args": ["-c", "sleep 30"]}))
    await asyncio.sleep(0.5)
    stack.agent.send_signal(signal.SIGKILL)
    stack.agent.wait(10)
    r = await asyncio.wait_for(in_flight, 15)
    assert r.status_code in (502, 503) and r.json()["error"]["code"] in ("agent_error", "host_unavailable")

    # Heartbeats stop: after the dead-after window (4 s here, 90 s by default) plus a monitor tick.
    waited = await _wait_host(stack, "unreachable", 20)
    assert waited >= 2
    body = (await sdk.get(f"/v1/capsules/{survivor}")).json()
    assert body["status"] == "missing"
    r = await sdk.post(f"/v1/capsules/{survivor}/exec", json={"cmd": "/bin/true"})
    assert r.status_code == 409
    r = await sdk.post("/v1/capsules", json={})
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_hosts_available"

    # The agent comes back with its saved credentials (no --register) and the host is reconciled.
    stack.restart_agent()
    await _wait_host(stack, "online", 30)
    final = await wait_status(sdk, survivor, "stopped", timeout=30)  # its capsule died with the agent
    assert final["status"] == "stopped"
    fresh = await new_capsule(sdk)
    assert (await run(sdk, fresh, "echo again"))["stdout"] == "again\n"


async def test_reconcile_ignores_rows_changed_while_listing(sdk: Client, stack: Stack) -> None:
    """A capsule that appears after ListSandboxes was taken must not be judged by that listing."""
    import uuid
    from datetime import timedelta

    import asyncpg

    from app.core import clock, ids

    capsule_id = uuid.uuid4()
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        host_id = ids.decode(ids.HOST, stack.host_id)
        team_id = ids.decode(ids.TEAM, stack.team_id)
        await conn.execute(
            "INSERT INTO sandboxes (id, team_id, host_id, status, last_updated) VALUES ($1, $2, $3, 'running', $4)",
            capsule_id, team_id, host_id, clock.now() + timedelta(seconds=30))
        await asyncio.sleep(3)  # several monitor ticks (1 s here); the agent has no such sandbox
        status = await conn.fetchval("SELECT status FROM sandboxes WHERE id = $1", capsule_id)
        assert status == "running"
        # Once its last change predates a listing, a running row the agent does not have is an orphan.
        await conn.execute("UPDATE sandboxes SET last_updated = $2 WHERE id = $1", capsule_id,
                           clock.now() - timedelta(seconds=5))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = await conn.fetchval("SELECT status FROM sandboxes WHERE id = $1", capsule_id)
            if status == "stopped":
                break
            await asyncio.sleep(0.2)
        assert status == "stopped"
    finally:
        await conn.close()
    assert (await sdk.get(f"/v1/capsules/{ids.encode(ids.CAPSULE, capsule_id)}")).json()["status"] == "stopped"
