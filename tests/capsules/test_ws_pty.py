"""PTY WebSocket with the 0.3.0 framing (sdk-wire.md §10.3) against a live stack with real capsules."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from tests.api.helpers import Client
from tests.capsules.conftest import Stack
from tests.capsules.helpers import new_capsule
from tests.capsules.ws_helpers import connect


@pytest.fixture(scope="module")
async def capsule(stack: Stack) -> AsyncIterator[str]:
    client = Client(stack.url, headers={"X-API-Key": stack.api_key})
    capsule_id = await new_capsule(client)
    yield capsule_id
    await client.delete(f"/v1/capsules/{capsule_id}")
    await client.http.aclose()


class Term:
    """Reads a PTY socket: binary output accumulates, JSON control messages are kept in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.output = b""
        self.controls: list[dict[str, Any]] = []

    async def start(self, **fields: Any) -> dict[str, Any]:
        await self.ws.send(json.dumps({"type": "start", "cmd": "/bin/bash", "cols": 80, "rows": 24, **fields}))
        started = await self.control("started")
        assert re.fullmatch(r"pty-[0-9a-f]{8}", started["tag"]) and started["pid"] > 0
        return started

    async def type(self, text: str) -> None:
        await self.ws.send(text.encode())  # raw binary stdin, as the 0.3.0 SDK sends it

    async def _next(self) -> None:
        message = await self.ws.recv()
        if isinstance(message, bytes):
            self.output += message
        else:
            self.controls.append(json.loads(message))

    async def until(self, needle: bytes, limit: float = 15) -> bytes:
        async with asyncio.timeout(limit):
            while needle not in self.output:
                await self._next()
        return self.output

    async def control(self, kind: str, limit: float = 15) -> dict[str, Any]:
        async with asyncio.timeout(limit):
            while True:
                for i, c in enumerate(self.controls):
                    if c.get("type") == kind:
                        return self.controls.pop(i)
                await self._next()


async def test_typed_input_resize_and_exit_code(stack: Stack, capsule: str) -> None:
    async with connect(stack, f"/v1/capsules/{capsule}/pty") as ws:
        t = Term(ws)
        await t.start()
        await t.type("echo hi-$((6*7))\n")
        await t.until(b"hi-42")
        await ws.send(json.dumps({"type": "resize", "cols": 100, "rows": 30}))
        await t.type("stty size\n")
        await t.until(b"30 100")
        await ws.send(json.dumps({"type": "pong"}))  # ignored
        await t.type("exit 3\n")
        assert await t.control("exit") == {"type": "exit", "exit_code": 3}
        await asyncio.wait_for(ws.wait_closed(), 10)
    assert not [c for c in t.controls if c.get("type") == "error"]


async def test_input_sent_right_after_start_is_not_lost(stack: Stack, capsule: str) -> None:
    for _ in range(3):
        async with connect(stack, f"/v1/capsules/{capsule}/pty") as ws:
            await ws.send(json.dumps({"type": "start"}))  # all defaults
            await ws.send(b"echo early-$((40+2))\n")  # before "started" has arrived
            await ws.send(json.dumps({"type": "resize", "cols": 90, "rows": 20}))
            t = Term(ws)
            await t.until(b"early-42")
            await ws.send(json.dumps({"type": "kill"}))  # the SDK's block exit
            await t.control("exit")


async def test_json_base64_input_and_coalesced_bursts(stack: Stack, capsule: str) -> None:
    async with connect(stack, f"/v1/capsules/{capsule}/pty") as ws:
        t = Term(ws)
        await t.start()
        data = base64.b64encode(b"echo b64-$((1+1))\n").decode()
        await ws.send(json.dumps({"type": "input", "data": data}))
        await t.until(b"b64-2")
        for ch in "echo burst-$((2+3))\n":  # one frame per keystroke, as a terminal sends them
            await ws.send(ch.encode())
        await t.until(b"burst-5")
        await ws.send(json.dumps({"type": "kill"}))
        exit_event = await t.control("exit")
        assert exit_event["exit_code"] != 0


async def test_command_args_cwd_envs(stack: Stack, capsule: str) -> None:
    async with connect(stack, f"/v1/capsules/{capsule}/pty") as ws:
        t = Term(ws)
        await t.start(cmd="/bin/echo", args=["hello", "pty"])
        await t.until(b"hello pty")
        assert (await t.control("exit"))["exit_code"] == 0
    async with connect(stack, f"/v1/capsules/{capsule}/pty") as ws:
        t = Term(ws)
        await t.start(cmd="/bin/sh", args=["-c", "echo X=$X; pwd; exit 7"], envs={"X": "1"}, cwd="/tmp")
        await t.until(b"/tmp")
        assert b"X=1" in t.output
        assert (await t.control("exit"))["exit_code"] == 7


async def test_reattach_by_tag_after_dropped_socket(stack: Stack, capsule: str) -> None:
    async with connect(stack, f"/v1/capsules/{capsule}/pty") as ws:
        t = Term(ws)
        tag = (await t.start())["tag"]
        await t.type("export MARK=kept; echo set-$MARK\n")
        await t.until(b"set-kept")
    # The socket is gone (no kill): the terminal survives and can be reattached.
    async with connect(stack, f"/v1/capsules/{capsule}/pty") as ws:
        t = Term(ws)
        await ws.send(json.dumps({"type": "connect", "tag": tag}))
        await t.type("echo again-$MARK\n")
        await t.until(b"again-kept")
        assert not [c for c in t.controls if c.get("type") == "started"]  # no "started" after connect
        await ws.send(json.dumps({"type": "kill"}))
        await ws.send(json.dumps({"type": "kill"}))  # duplicate kill is tolerated
        assert "exit_code" in await t.control("exit")
        await asyncio.wait_for(ws.wait_closed(), 10)
    assert not [c for c in t.controls if c.get("type") == "error" and c.get("fatal")]
    # The process is gone now: reattaching is a fatal error inside the socket.
    async with connect(stack, f"/v1/capsules/{capsule}/pty") as ws:
        await ws.send(json.dumps({"type": "connect", "tag": tag}))
        t = Term(ws)
        event = await t.control("error")
        assert event["fatal"] is True and event["data"]


async def test_kill_on_block_exit_after_exit_is_harmless(stack: Stack, capsule: str) -> None:
    async with connect(stack, f"/v1/capsules/{capsule}/pty") as ws:
        t = Term(ws)
        await t.start(cmd="/bin/true")
        assert (await t.control("exit"))["exit_code"] == 0
        await ws.send(json.dumps({"type": "kill"}))  # what the SDK does on leaving its `with` block
    async with connect(stack, f"/v1/capsules/{capsule}/pty") as ws:  # the server is fine
        t = Term(ws)
        await t.start(cmd="/bin/echo", args=["ok"])
        await t.until(b"ok")


async def test_pings_arrive_and_terminal_keeps_working(stack: Stack, capsule: str) -> None:
    previous = stack.settings.pty_ping_interval_sec
    stack.settings.pty_ping_interval_sec = 0.5
    try:
        async with connect(stack, f"/v1/capsules/{capsule}/pty") as ws:
            t = Term(ws)
            await t.start()
            assert await t.control("ping", limit=10) == {"type": "ping"}
            await ws.send(json.dumps({"type": "pong"}))
            assert await t.control("ping", limit=10) == {"type": "ping"}
            await t.type("echo alive-$((40+2))\n")
            await t.until(b"alive-42")
            await ws.send(json.dumps({"type": "kill"}))
            await t.control("exit")
    finally:
        stack.settings.pty_ping_interval_sec = previous


@pytest.mark.parametrize("first", [
    "nonsense", json.dumps({"type": "bogus"}), json.dumps({"type": "connect"}),
    json.dumps({"type": "connect", "tag": "pty-00000000"}), json.dumps({"type": "start", "cols": -1}),
    json.dumps({"type": "start", "envs": {"A": 1}}),
    b"binary first",
])
async def test_bad_first_message_is_a_fatal_error(stack: Stack, capsule: str, first: str | bytes) -> None:
    async with connect(stack, f"/v1/capsules/{capsule}/pty") as ws:
        await ws.send(first)
        t = Term(ws)
        event = await t.control("error")
        assert event["fatal"] is True and event["data"]
        await asyncio.wait_for(ws.wait_closed(), 10)


async def test_missing_program_ends_the_session(stack: Stack, capsule: str) -> None:
    async with connect(stack, f"/v1/capsules/{capsule}/pty") as ws:
        await ws.send(json.dumps({"type": "start", "cmd": "/no/such/program"}))
        messages = [json.loads(m) async for m in ws if isinstance(m, str)]
    last = messages[-1]  # the agent may refuse to start it, or start it and report the exec failure
    assert (last["type"] == "error" and last["fatal"]) or (last["type"] == "exit" and last["exit_code"] != 0)


async def test_invalid_control_messages_are_non_fatal(stack: Stack, capsule: str) -> None:
    async with connect(stack, f"/v1/capsules/{capsule}/pty") as ws:
        t = Term(ws)
        await t.start()
        await ws.send(json.dumps({"type": "resize", "cols": 0, "rows": 10}))
        assert (await t.control("error"))["fatal"] is False
        await ws.send(json.dumps({"type": "input", "data": "%%% not base64"}))
        assert (await t.control("error"))["fatal"] is False
        await ws.send(json.dumps({"type": "something-new"}))  # ignored
        await ws.send("{}")  # ignored
        await t.type("echo still-$((3*3))\n")
        await t.until(b"still-9")
        await ws.send(json.dumps({"type": "kill"}))
        await t.control("exit")
