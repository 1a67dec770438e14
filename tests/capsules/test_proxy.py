"""The per-capsule port proxy (control-plane.md §12, sdk-wire.md §12) end to end: the CP's Host-header
middleware → the real agent's /proxy endpoint over mTLS → servers running inside a real capsule."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.api.helpers import Client, Platform
from tests.capsules.conftest import Stack
from tests.capsules.helpers import new_capsule, run, wait_status

UPSTREAM = Path(__file__).with_name("proxy_upstream.py").read_bytes()
HTTP_SERVER_PORT, CUSTOM_PORT, DEAD_PORT = 8000, 9000, 8001


@pytest.fixture(scope="module")
async def capsule(stack: Stack) -> AsyncIterator[str]:
    """A capsule running ``python3 -m http.server 8000`` and the test upstream on 9000."""
    client = Client(stack.url, headers={"X-API-Key": stack.api_key})
    capsule_id = await new_capsule(client)
    await run(client, capsule_id, "mkdir -p /tmp/site && echo hello > /tmp/site/greeting.txt")
    r = await client.post(f"/v1/capsules/{capsule_id}/files/write", data={"path": "/tmp/upstream.py"},
                          files={"file": ("upstream.py", UPSTREAM)})
    assert r.status_code == 204, r.text
    for cmd, cwd in ((f"python3 -m http.server {HTTP_SERVER_PORT}", "/tmp/site"),
                     (f"python3 /tmp/upstream.py {CUSTOM_PORT}", "/tmp")):
        r = await client.post(f"/v1/capsules/{capsule_id}/exec",
                              json={"cmd": "/bin/sh", "args": ["-c", cmd], "background": True, "cwd": cwd})
        assert r.status_code == 202, r.text
    yield capsule_id
    await client.delete(f"/v1/capsules/{capsule_id}")
    await client.http.aclose()


def _host(stack: Stack, port: int, capsule_id: str, domain: str = "127.0.0.1") -> str:
    return f"{port}-{capsule_id}.{domain}:{stack.url.rsplit(':', 1)[1]}"


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        yield client


async def _get(http: httpx.AsyncClient, stack: Stack, port: int, capsule_id: str, path: str = "/",
               key: str | None = "default", **kw: object) -> httpx.Response:
    headers = {"Host": _host(stack, port, capsule_id)}
    if key is not None:
        headers["X-API-Key"] = stack.api_key if key == "default" else key
    headers.update(kw.pop("headers", None) or {})  # type: ignore[arg-type]
    return await http.request(str(kw.pop("method", "GET")), path, headers=headers, **kw)  # type: ignore[arg-type]


async def _until_listening(http: httpx.AsyncClient, stack: Stack, port: int, capsule_id: str) -> httpx.Response:
    """Retry like the code runner: 5xx while the service starts, never 404/409."""
    deadline = time.monotonic() + 30
    while True:
        r = await _get(http, stack, port, capsule_id)
        if r.status_code < 500:
            return r
        assert r.status_code in (502, 503), r.text
        assert time.monotonic() < deadline, "service never came up"
        await asyncio.sleep(0.3)


async def test_http_server_listing_through_the_proxy(http: httpx.AsyncClient, stack: Stack, capsule: str) -> None:
    r = await _until_listening(http, stack, HTTP_SERVER_PORT, capsule)
    assert r.status_code == 200 and "greeting.txt" in r.text
    r = await _get(http, stack, HTTP_SERVER_PORT, capsule, "/greeting.txt")
    assert r.status_code == 200 and r.text == "hello\n"
    # /v1/... on a proxy host is the capsule's, never the API's.
    r = await _get(http, stack, HTTP_SERVER_PORT, capsule, "/v1/capsules")
    assert r.status_code == 404 and "error" not in r.headers.get("content-type", "json")
    # The ordinary API on the same listener is untouched.
    r = await http.get("/v1/capsules", headers={"X-API-Key": stack.api_key})
    assert r.status_code == 200 and isinstance(r.json(), list)


async def test_nothing_listening_is_502_and_recovers(http: httpx.AsyncClient, stack: Stack, sdk: Client,
                                                     capsule: str) -> None:
    r = await _get(http, stack, DEAD_PORT, capsule)
    assert r.status_code == 502 and r.json()["error"]["code"] == "agent_error"
    await sdk.post(f"/v1/capsules/{capsule}/exec", json={
        "cmd": "/bin/sh", "args": ["-c", f"sleep 1; exec python3 -m http.server {DEAD_PORT}"], "background": True,
        "cwd": "/tmp/site"})
    r = await _until_listening(http, stack, DEAD_PORT, capsule)
    assert r.status_code == 200 and "greeting.txt" in r.text


async def test_headers_credentials_stripped_and_forwarded_info(http: httpx.AsyncClient, stack: Stack,
                                                               capsule: str) -> None:
    await _until_listening(http, stack, CUSTOM_PORT, capsule)
    cookie = f"wrenn_sid={stack.admin_cookies['wrenn_sid']}; theirs=1; wrenn_csrf=x"
    r = await _get(http, stack, CUSTOM_PORT, capsule, "/headers/a%20b/?x=1&y=2",
                   headers={"Cookie": cookie, "X-Custom": "v"})
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["path"] == "/headers/a%20b/?x=1&y=2"  # path (encoding, trailing slash) and query kept
    headers = seen["headers"]
    assert "x-api-key" not in headers and headers["cookie"] == "theirs=1"
    assert headers["x-custom"] == "v" and headers["x-forwarded-host"] == _host(stack, CUSTOM_PORT, capsule)


async def test_bodies_stream_both_ways_and_redirects(http: httpx.AsyncClient, stack: Stack, capsule: str) -> None:
    await _until_listening(http, stack, CUSTOM_PORT, capsule)

    async def body() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"chunk{i};".encode()

    r = await _get(http, stack, CUSTOM_PORT, capsule, "/echo", method="POST", content=body())
    assert r.status_code == 200 and r.text == "chunk0;chunk1;chunk2;" and r.headers["x-method"] == "POST"
    big = b"x" * (3 << 20)  # more than the API's JSON body limit: the proxy is not the API
    r = await _get(http, stack, CUSTOM_PORT, capsule, "/echo", method="PUT", content=big)
    assert r.status_code == 200 and len(r.content) == len(big)

    headers = {"Host": _host(stack, CUSTOM_PORT, capsule), "X-API-Key": stack.api_key}
    async with http.stream("GET", "/stream", headers=headers) as resp:
        stamps = [(time.monotonic(), chunk) async for chunk in resp.aiter_raw()]
    assert b"".join(c for _, c in stamps) == b"part0\npart1\npart2\n"
    assert stamps[-1][0] - stamps[0][0] > 0.5  # delivered as produced, not buffered

    r = await _get(http, stack, CUSTOM_PORT, capsule, "/redirect")
    assert r.status_code == 302 and r.headers["location"] == "/landing"
    r = await _get(http, stack, CUSTOM_PORT, capsule, "/redirect-abs")
    assert r.status_code == 302 and r.headers["location"] == "/abs/path?q=1"


async def test_authentication_and_errors(http: httpx.AsyncClient, stack: Stack, live: Platform,
                                         capsule: str) -> None:
    await _until_listening(http, stack, CUSTOM_PORT, capsule)
    r = await _get(http, stack, CUSTOM_PORT, capsule, key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = await _get(http, stack, CUSTOM_PORT, capsule, key="wrn_" + "1" * 40)
    assert r.status_code == 401
    cookie = {"Cookie": f"wrenn_sid={stack.admin_cookies['wrenn_sid']}"}
    r = await _get(http, stack, CUSTOM_PORT, capsule, "/headers", key=None, headers=cookie)
    assert r.status_code == 200 and "cookie" not in r.json()["headers"]  # a team session works too

    other = await live.user()
    other_key = (await other.post("/v1/api-keys", json={"name": "k"})).json()["key"]
    r = await _get(http, stack, CUSTOM_PORT, capsule, key=other_key)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

    assert (await _get(http, stack, CUSTOM_PORT, f"cl-{'0' * 25}")).status_code == 404
    for bad_port in ("0", "70000", "123456"):
        r = await http.get("/", headers={"Host": f"{bad_port}-{capsule}.127.0.0.1", "X-API-Key": stack.api_key})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    r = await http.get("/", headers={"Host": "8000-cl-short.127.0.0.1", "X-API-Key": stack.api_key})
    assert r.status_code == 400

    stack.settings.proxy_require_auth = False  # the reference behaviour: the capsule ID is the secret
    try:
        assert (await _get(http, stack, CUSTOM_PORT, capsule, "/headers", key=None)).status_code == 200
        assert (await _get(http, stack, CUSTOM_PORT, capsule, key="wrn_" + "1" * 40)).status_code == 401
    finally:
        stack.settings.proxy_require_auth = True


async def test_proxy_domain_setting(http: httpx.AsyncClient, stack: Stack, capsule: str) -> None:
    await _until_listening(http, stack, CUSTOM_PORT, capsule)
    stack.settings.proxy_domain = f"wrenn.test:{stack.url.rsplit(':', 1)[1]}"
    try:
        headers = {"X-API-Key": stack.api_key}
        r = await http.get("/headers", headers={**headers, "Host": _host(stack, CUSTOM_PORT, capsule, "wrenn.test")})
        assert r.status_code == 200 and r.json()["path"] == "/headers"
        r = await http.get("/headers", headers={**headers, "Host": _host(stack, CUSTOM_PORT, capsule)})
        assert r.status_code == 404 and r.json()["error"]["message"] == "route not found"  # the API's answer
    finally:
        stack.settings.proxy_domain = ""


def _ws(stack: Stack, capsule_id: str, path: str = "/api/kernels/k/channels", key: str | None = "default",
        **kw: object) -> websockets.asyncio.client.connect:
    port = int(stack.url.rsplit(":", 1)[1])
    headers = {"X-API-Key": stack.api_key if key == "default" else key} if key else {}
    return websockets.connect(f"ws://{_host(stack, CUSTOM_PORT, capsule_id)}{path}", host="127.0.0.1", port=port,
                              additional_headers=headers, open_timeout=30, **kw)  # type: ignore[arg-type]


async def test_websocket_relay_like_a_jupyter_channel(http: httpx.AsyncClient, stack: Stack, capsule: str) -> None:
    await _until_listening(http, stack, CUSTOM_PORT, capsule)
    async with _ws(stack, capsule) as ws:
        for i in range(20):  # request/response pairs arrive one by one, unbuffered
            message = json.dumps({"msg_type": "execute_request", "n": i})
            started = time.monotonic()
            await ws.send(message)
            assert await asyncio.wait_for(ws.recv(), 5) == message
            assert time.monotonic() - started < 2
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
        big = "y" * 300_000
        await ws.send(big)
        assert await ws.recv() == big
        await asyncio.wait_for(await ws.ping(), 5)  # the CP answers pings on the client leg
        await ws.send("close-4001")
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 4001
    async with _ws(stack, capsule, subprotocols=["echo.v1"]) as ws:
        assert ws.subprotocol == "echo.v1"


async def test_websocket_refusals(http: httpx.AsyncClient, stack: Stack, capsule: str) -> None:
    await _until_listening(http, stack, CUSTOM_PORT, capsule)
    cases = [({"key": None}, 401), ({"key": "wrn_" + "2" * 40}, 401)]
    for kw, status in cases:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with _ws(stack, capsule, **kw):
                pass
        assert info.value.response.status_code == status
    with pytest.raises(websockets.InvalidStatus) as info:
        async with _ws(stack, f"cl-{'0' * 25}"):
            pass
    assert info.value.response.status_code == 404


async def test_paused_capsule_is_409_even_with_a_cached_route(http: httpx.AsyncClient, stack: Stack,
                                                              sdk: Client) -> None:
    capsule_id = await new_capsule(sdk)
    await sdk.post(f"/v1/capsules/{capsule_id}/exec", json={
        "cmd": "/bin/sh", "args": ["-c", f"exec python3 -m http.server {HTTP_SERVER_PORT}"], "background": True})
    assert (await _until_listening(http, stack, HTTP_SERVER_PORT, capsule_id)).status_code == 200  # route cached
    assert (await sdk.post(f"/v1/capsules/{capsule_id}/pause")).status_code == 202
    await wait_status(sdk, capsule_id, "paused")
    r = await _get(http, stack, HTTP_SERVER_PORT, capsule_id)
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"
    await sdk.delete(f"/v1/capsules/{capsule_id}")
    await wait_status(sdk, capsule_id, "stopped")
    assert (await _get(http, stack, HTTP_SERVER_PORT, capsule_id)).status_code == 409
