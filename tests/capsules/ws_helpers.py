"""WebSocket client helpers for the capsule socket tests (the SDK's framing, sdk-wire.md §10)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from tests.capsules.conftest import Stack


def ws_url(stack: Stack, path: str) -> str:
    return "ws" + stack.url.removeprefix("http") + path


@asynccontextmanager
async def connect(stack: Stack, path: str, key: str | None = "default",
                  headers: dict[str, str] | None = None) -> AsyncIterator[ClientConnection]:
    """Open a socket the way the SDK does: X-API-Key header, no subprotocol, pings every 20 s."""
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["X-API-Key"] = stack.api_key if key == "default" else key
    async with websockets.connect(ws_url(stack, path), additional_headers=hdrs, open_timeout=30,
                                  max_size=None, compression=None) as ws:
        yield ws


async def refused(stack: Stack, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of an upgrade the server refuses (the test fails if it is accepted)."""
    try:
        async with connect(stack, path, **kw):
            pass
    except websockets.InvalidStatus as exc:
        body = exc.response.body or b"{}"
        return exc.response.status_code, json.loads(body)
    raise AssertionError(f"upgrade of {path} was accepted")


async def messages(ws: ClientConnection, limit: float = 30) -> list[dict[str, Any]]:
    """JSON messages until ``exit``/``error`` (inclusive) or the close; then expect the close."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(limit):
        async for raw in ws:
            assert isinstance(raw, str), f"binary frame on a JSON socket: {raw!r}"
            out.append(json.loads(raw))
            if out[-1].get("type") in ("exit", "error"):
                break
        await ws.wait_closed()
    return out


def text_of(events: list[dict[str, Any]], kind: str = "stdout") -> str:
    return "".join(e["data"] for e in events if e["type"] == kind)


async def start_exec(ws: ClientConnection, command: str) -> None:
    await ws.send(json.dumps({"type": "start", "cmd": "/bin/sh", "args": ["-c", command]}))
