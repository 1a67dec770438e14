"""Helpers for the template-build tests: an admin client on a live stack, waiting for builds, recipes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.api.helpers import Client
from tests.capsules.conftest import Stack

FINISHED = ("success", "failed", "cancelled")


def admin_client(stack: Stack) -> Client:
    client = Client(stack.url, timeout=120)
    client.http.cookies = stack.admin_cookies
    return client


async def wait_build(admin: Client, build_id: str, *, within: float = 300, cleaned: bool = True,
                     status: tuple[str, ...] = FINISHED) -> dict[str, Any]:
    """Poll the build until its status is one of ``status`` (and its capsule is cleaned up)."""
    deadline = time.monotonic() + within
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await admin.get(f"/v1/admin/builds/{build_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in status and (not cleaned or body["cleaned_up"] or body["status"] not in FINISHED):
            return body
        await asyncio.sleep(0.25)
    raise AssertionError(f"build {build_id} did not reach {status}: {body.get('status')} {body.get('steps')}")


async def wait_step(admin: Client, build_id: str, index: int, within: float = 120) -> dict[str, Any]:
    """Wait until step ``index`` (1-based) is running."""
    deadline = time.monotonic() + within
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = (await admin.get(f"/v1/admin/builds/{build_id}")).json()
        if body["steps"][index - 1]["status"] == "running":
            return body
        assert body["status"] in ("pending", "running"), body
        await asyncio.sleep(0.1)
    raise AssertionError(f"step {index} never ran: {body}")


async def capsule_status(admin: Client, capsule_id: str) -> str:
    r = await admin.get(f"/v1/admin/capsules/{capsule_id}")
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


def small_recipe(name: str, **extra: Any) -> dict[str, Any]:
    """Quick steps (no network)."""
    return {"name": name, "base": "minimal",
            "steps": [{"name": "marker", "run": "echo built > /etc/marker && echo done"}], **extra}


async def delete_template(admin: Client, name: str, within: float = 60) -> None:
    """Remove a platform template a test built (its files live in the agent's shared templates dir); retried
    while the capsules that used it are still stopping."""
    deadline = time.monotonic() + within
    while True:
        r = await admin.delete(f"/v1/admin/templates/{name}")
        if r.status_code in (204, 404):
            return
        assert r.status_code == 409 and time.monotonic() < deadline, r.text
        await asyncio.sleep(0.5)
