"""Exec stream and process connect WebSockets (sdk-wire.md §10.1, §10.2) against a live stack: real CP,
real agent, real bubblewrap capsules; plus the upgrade-time refusals shared by every capsule socket."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from tests.api.helpers import Client, Platform
from tests.capsules.conftest import Stack
from tests.capsules.helpers import new_capsule, run, wait_status
from tests.capsules.ws_helpers import connect, messages, refused, start_exec, text_of


@pytest.fixture(scope="module")
async def capsule(stack: Stack) -> AsyncIterator[str]:
    client = Client(stack.url, headers={"X-API-Key": stack.api_key})
    capsule_id = await new_capsule(client)
    yield capsule_id
    await client.delete(f"/v1/capsules/{capsule_id}")
    await client.http.aclose()


async def _procs(sdk: Client, capsule_id: str) -> str:
    """Every command line in the capsule (no ps needed)."""
    out = await run(sdk, capsule_id, "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done 2>/dev/null")
    return str(out["stdout"])


async def _exec(stack: Stack, capsule_id: str, command: str) -> list[dict]:
    async with connect(stack, f"/v1/capsules/{capsule_id}/exec/stream") as ws:
        await start_exec(ws, command)
        return await messages(ws)


async def test_echo_streams_start_stdout_exit(stack: Stack, capsule: str) -> None:
    events = await _exec(stack, capsule, "echo streamed")
    assert events[0]["type"] == "start" and events[0]["pid"] > 0
    assert text_of(events) == "streamed\n"
    assert events[-1] == {"type": "exit", "exit_code": 0}


async def test_loop_lines_arrive_in_order_and_incrementally(stack: Stack, capsule: str) -> None:
    async with connect(stack, f"/v1/capsules/{capsule}/exec/stream") as ws:
        await start_exec(ws, "for i in 1 2 3; do echo line$i; sleep 0.3; done")
        arrivals: list[tuple[float, dict]] = []
        async for raw in ws:
            arrivals.append((time.monotonic(), json.loads(raw)))
            if arrivals[-1][1]["type"] == "exit":
                break
    events = [e for _, e in arrivals]
    assert text_of(events) == "line1\nline2\nline3\n"
    stamps = [t for t, e in arrivals if e["type"] == "stdout"]
    assert len(stamps) >= 2 and stamps[-1] - stamps[0] > 0.3  # streamed, not buffered to the end


async def test_exit_code_stderr_and_non_utf8(stack: Stack, capsule: str) -> None:
    command = "echo oops >&2; printf 'a\\377b\\n'; printf '\\342\\202'; printf '\\254\\n'; exit 5"
    events = await _exec(stack, capsule, command)
    assert text_of(events, "stderr") == "oops\n"
    assert text_of(events) == "a\ufffdb\n€\n"  # replacement char; a split multi-byte char stays whole
    assert events[-1] == {"type": "exit", "exit_code": 5}


async def test_closing_the_socket_kills_the_command(stack: Stack, sdk: Client, capsule: str) -> None:
    async with connect(stack, f"/v1/capsules/{capsule}/exec/stream") as ws:
        await start_exec(ws, "echo ready; exec sleep 4321")
        assert json.loads(await ws.recv())["type"] == "start"
        assert json.loads(await ws.recv()) == {"type": "stdout", "data": "ready\n"}
        assert "sleep 4321" in await _procs(sdk, capsule)
    await _gone(sdk, capsule, "sleep 4321")


async def test_stop_message_cancels_the_command(stack: Stack, sdk: Client, capsule: str) -> None:
    async with connect(stack, f"/v1/capsules/{capsule}/exec/stream") as ws:
        await start_exec(ws, "echo ready; exec sleep 4322")
        assert json.loads(await ws.recv())["type"] == "start"
        await ws.recv()
        await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(ws.wait_closed(), 10)
    await _gone(sdk, capsule, "sleep 4322")


async def _gone(sdk: Client, capsule_id: str, needle: str) -> None:
    deadline = time.monotonic() + 10
    while needle in await _procs(sdk, capsule_id):
        assert time.monotonic() < deadline, f"{needle!r} still running"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("first", [
    "not json", "[1, 2]", json.dumps({"type": "start"}), json.dumps({"type": "bogus", "cmd": "x"}),
    json.dumps({"type": "start", "cmd": "/bin/sh", "args": "nope"}), b"\x00binary",
])
async def test_garbage_first_message_gives_error_and_close(stack: Stack, capsule: str, first: str | bytes) -> None:
    async with connect(stack, f"/v1/capsules/{capsule}/exec/stream") as ws:
        await ws.send(first)
        events = await messages(ws, limit=10)
    assert [e["type"] for e in events] == ["error"] and events[0]["data"]
    assert (await _exec(stack, capsule, "echo still fine"))[-1]["exit_code"] == 0


async def test_unknown_command_reports_inside_the_socket(stack: Stack, capsule: str) -> None:
    async with connect(stack, f"/v1/capsules/{capsule}/exec/stream") as ws:
        await ws.send(json.dumps({"type": "start", "cmd": "/no/such/binary"}))
        events = await messages(ws)
    assert events[-1]["type"] in ("error", "exit")
    if events[-1]["type"] == "exit":
        assert events[-1]["exit_code"] != 0


async def test_pings_are_answered_while_output_streams(stack: Stack, capsule: str) -> None:
    async with connect(stack, f"/v1/capsules/{capsule}/exec/stream") as ws:
        await start_exec(ws, "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); sleep 0.001; done; echo done")
        await ws.recv()
        reader = asyncio.ensure_future(messages(ws))  # keep consuming, like the SDK's reader does
        latencies = []
        for _ in range(3):
            started = time.monotonic()
            await asyncio.wait_for(await ws.ping(), 5)
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.2)
        events = await reader
    assert max(latencies) < 5 and events[-1] == {"type": "exit", "exit_code": 0}
    assert "done\n" in text_of(events) and len(latencies) == 3


async def test_last_active_at_updated_when_the_socket_ends(stack: Stack, sdk: Client, capsule: str) -> None:
    before = (await sdk.get(f"/v1/capsules/{capsule}")).json()["last_active_at"]
    await asyncio.sleep(0.05)
    await _exec(stack, capsule, "true")
    deadline = time.monotonic() + 5
    while (await sdk.get(f"/v1/capsules/{capsule}")).json()["last_active_at"] == before:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


# --- process connect ---------------------------------------------------------------------------


async def _background(sdk: Client, capsule_id: str, command: str, tag: str = "") -> int:
    body = {"cmd": "/bin/sh", "args": ["-c", command], "background": True, **({"tag": tag} if tag else {})}
    r = await sdk.post(f"/v1/capsules/{capsule_id}/exec", json=body)
    assert r.status_code == 202, r.text
    return int(r.json()["pid"])


async def test_connect_to_running_process_by_pid_and_tag(stack: Stack, sdk: Client, capsule: str) -> None:
    pid = await _background(sdk, capsule, "sleep 1; for i in 1 2 3; do echo tick$i; sleep 0.3; done; exit 4",
                            tag="ticker")
    async with connect(stack, f"/v1/capsules/{capsule}/processes/{pid}/stream") as by_pid, \
            connect(stack, f"/v1/capsules/{capsule}/processes/ticker/stream") as by_tag:
        await by_pid.send("client messages are ignored")
        results = await asyncio.gather(messages(by_pid), messages(by_tag))
    for events in results:
        assert "tick3\n" in text_of(events)
        assert events[-1] == {"type": "exit", "exit_code": 4}


async def test_connect_to_finished_or_unknown_process_upgrades_then_ends(stack: Stack, sdk: Client,
                                                                           capsule: str) -> None:
    pid = await _background(sdk, capsule, "exit 0")
    await asyncio.sleep(0.5)
    for selector in (str(pid), "999999", "no-such-tag"):
        async with connect(stack, f"/v1/capsules/{capsule}/processes/{selector}/stream") as ws:
            events = await messages(ws)  # upgrade succeeded; at most exit/error, then close
        assert all(e["type"] in ("start", "stdout", "stderr", "exit", "error") for e in events)
        assert not events or events[-1]["type"] in ("exit", "error")


async def test_disconnect_from_process_stream_leaves_process_running(stack: Stack, sdk: Client,
                                                                      capsule: str) -> None:
    pid = await _background(sdk, capsule, "exec sleep 4323")
    async with connect(stack, f"/v1/capsules/{capsule}/processes/{pid}/stream") as ws:
        assert json.loads(await ws.recv())["type"] == "start"
    await asyncio.sleep(0.5)
    assert "sleep 4323" in await _procs(sdk, capsule)
    assert (await sdk.delete(f"/v1/capsules/{capsule}/processes/{pid}")).status_code == 204


# --- refusals before the upgrade (all capsule sockets) ----------------------------------------

PATHS = ("/exec/stream", "/pty", "/processes/1/stream")


async def test_refusals_before_upgrade(stack: Stack, live: Platform, capsule: str) -> None:
    for suffix in PATHS:
        path = f"/v1/capsules/{capsule}{suffix}"
        assert (await refused(stack, path, key=None))[0] == 401
        status, body = await refused(stack, path, key="wrn_" + "0" * 40)
        assert status == 401 and body["error"]["code"] == "unauthorized"
        status, body = await refused(stack, f"/v1/capsules/cl-{'0' * 25}{suffix}")
        assert status == 404 and body["error"]["code"] == "not_found"
        assert (await refused(stack, f"/v1/capsules/not-an-id{suffix}"))[0] == 400
    other = await live.user()
    r = await other.post("/v1/api-keys", json={"name": "other"})
    assert r.status_code == 201, r.text
    for suffix in PATHS:
        status, body = await refused(stack, f"/v1/capsules/{capsule}{suffix}", key=r.json()["key"])
        assert status == 404 and body["error"]["code"] == "not_found"
        # A session of another team is refused too.
        cookie = f"wrenn_sid={other.http.cookies['wrenn_sid']}"
        assert (await refused(stack, f"/v1/capsules/{capsule}{suffix}", key=None, headers={"Cookie": cookie}))[0] == 404


async def test_paused_capsule_is_409_and_admin_variants(stack: Stack, sdk: Client, live: Platform) -> None:
    capsule_id = await new_capsule(sdk)
    admin_cookie = {"Cookie": f"wrenn_sid={stack.admin_cookies['wrenn_sid']}"}
    async with connect(stack, f"/v1/admin/capsules/{capsule_id}/exec/stream", key=None, headers=admin_cookie) as ws:
        await start_exec(ws, "echo admin")
        assert text_of(await messages(ws)) == "admin\n"
    assert (await refused(stack, f"/v1/admin/capsules/{capsule_id}/pty"))[0] == 401  # API keys are not admins
    user = await live.user()
    cookie = {"Cookie": f"wrenn_sid={user.http.cookies['wrenn_sid']}"}
    assert (await refused(stack, f"/v1/admin/capsules/{capsule_id}/pty", key=None, headers=cookie))[0] == 403
    evil = {**admin_cookie, "Origin": "https://evil.example"}
    assert (await refused(stack, f"/v1/admin/capsules/{capsule_id}/pty", key=None, headers=evil))[0] == 403

    assert (await sdk.post(f"/v1/capsules/{capsule_id}/pause")).status_code == 202
    await wait_status(sdk, capsule_id, "paused")
    for suffix in PATHS:
        status, body = await refused(stack, f"/v1/capsules/{capsule_id}{suffix}")
        assert status == 409 and body["error"]["code"] == "invalid_state"
    await sdk.delete(f"/v1/capsules/{capsule_id}")
