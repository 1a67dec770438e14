"""Capsule lifecycle over HTTP against a live control plane and a real agent."""

from __future__ import annotations

from tests.api.helpers import Client
from tests.capsules.conftest import Stack
from tests.capsules.helpers import new_capsule, run, wait_status


async def test_create_exec_pause_resume_destroy(sdk: Client, stack: Stack) -> None:
    capsule_id = await new_capsule(sdk)
    body = (await sdk.get(f"/v1/capsules/{capsule_id}")).json()
    assert body["template"] == "minimal" and body["host_ip"] and body["started_at"].endswith("Z")
    assert capsule_id in [c["id"] for c in (await sdk.get("/v1/capsules")).json()]

    result = await run(sdk, capsule_id, "echo hi; whoami; pwd; exit 3")
    assert result["stdout"] == "hi\nwrenn-user\n/home/wrenn-user\n" and result["exit_code"] == 3

    await run(sdk, capsule_id, "echo 1 > /tmp/state")
    r = await sdk.post(f"/v1/capsules/{capsule_id}/pause")
    assert r.status_code == 202 and r.json()["status"] == "pausing"
    await wait_status(sdk, capsule_id, "paused")
    r = await sdk.post(f"/v1/capsules/{capsule_id}/exec", json={"cmd": "/bin/true"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"
    r = await sdk.post(f"/v1/capsules/{capsule_id}/pause")
    assert r.status_code == 202 and r.json()["status"] == "paused"

    r = await sdk.post(f"/v1/capsules/{capsule_id}/resume")
    assert r.status_code == 202 and r.json()["status"] == "resuming"
    await wait_status(sdk, capsule_id, "running")
    assert (await run(sdk, capsule_id, "cat /tmp/state"))["stdout"] == "1\n"

    r = await sdk.delete(f"/v1/capsules/{capsule_id}")
    assert r.status_code == 202
    r = await sdk.delete(f"/v1/capsules/{capsule_id}")
    assert r.status_code == 202
    await wait_status(sdk, capsule_id, "stopped")
    assert capsule_id not in [c["id"] for c in (await sdk.get("/v1/capsules")).json()]
