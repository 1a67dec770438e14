"""Small helpers shared by the capsule tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.api.helpers import Client


async def wait_status(client: Client, capsule_id: str, wanted: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await client.get(f"/v1/capsules/{capsule_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] == wanted:
            return body
        if body["status"] == "error":
            raise AssertionError(f"capsule failed: {body}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"capsule {capsule_id} never became {wanted}: {body}")


async def new_capsule(client: Client, **spec: Any) -> str:
    r = await client.post("/v1/capsules", json=spec)
    assert r.status_code == 202, r.text
    capsule = r.json()
    assert capsule["status"] == "starting"
    await wait_status(client, capsule["id"], "running")
    return str(capsule["id"])


async def run(client: Client, capsule_id: str, command: str, **extra: Any) -> dict[str, Any]:
    r = await client.post(f"/v1/capsules/{capsule_id}/exec",
                          json={"cmd": "/bin/sh", "args": ["-c", command], **extra})
    assert r.status_code == 200, r.text
    return dict(r.json())
