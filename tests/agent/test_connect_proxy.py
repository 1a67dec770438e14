"""The agent's /proxy/{sandbox_id}/{port}/... endpoint (hostagent-wire.md §8) through the CP client.

Real agent server over mTLS on 127.0.0.1; the upstream "capsule services" are a stdlib HTTP server and
a websockets echo server on loopback. The runtime is a stub whose only job is ``proxy_target``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from websockets.asyncio.server import ServerConnection, serve

from app.hostagent import tls
from app.hostagent.client import AgentClient, AgentError, strip_proxy_prefix
from app.hostagent.portproxy import parse_proxy_path, rewrite_location
from app.hostagent.runtime.base import SandboxNotFound
from app.hostagent.server import AgentThread, build_agent_app

SID = "cl-proxytest"


class ProxyRuntime:
    def proxy_target(self, sandbox_id: str, port: int) -> tuple[str, int]:
        if sandbox_id != SID:
            raise SandboxNotFound(sandbox_id)
        return "127.0.0.1", port


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        body = self._body()
        if self.path.startswith("/redir"):
            target = {
                "/redir/rel": "/landing?x=1",
                "/redir/abs": f"http://127.0.0.1:{self.server.server_port}/abs/path?q=2",
                "/redir/foreign": "https://example.com/elsewhere",
            }[self.path]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        out = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode(),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while size := int(self.rfile.readline().strip(), 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return out
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_port
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def ca() -> tls.CertificateAuthority:
    return tls.generate_ca()


@pytest.fixture(scope="module")
def agent(ca: tls.CertificateAuthority) -> Iterator[AgentThread]:
    host = tls.issue_host_cert(ca, "host-proxy", "127.0.0.1:1")
    ctx = tls.ServerTLS(host.cert_pem, host.key_pem, host.ca_cert_pem).context
    thread = AgentThread(build_agent_app(ProxyRuntime()), ctx).start()  # type: ignore[arg-type]
    yield thread
    thread.stop()


@pytest.fixture
async def client(agent: AgentThread, ca: tls.CertificateAuthority) -> AsyncIterator[AgentClient]:
    c = AgentClient(agent.address, tls.ClientCertHolder(ca))
    yield c
    await c.aclose()


async def _fetch(
    client: AgentClient, port: int, path: str, method: str = "GET", **kw: object
) -> tuple[int, dict, bytes]:
    resp = await client.proxy_request(SID, port, method, path, **kw)  # type: ignore[arg-type]
    try:
        body = await resp.aread()
        return resp.status_code, dict(resp.headers), body
    finally:
        await resp.aclose()


def test_path_parsing_and_location_rules() -> None:
    assert parse_proxy_path("/proxy/cl-a/8080") == ("cl-a", 8080, "/")
    assert parse_proxy_path("/proxy/cl-a/8080/x/y/") == ("cl-a", 8080, "/x/y/")
    prefix, internal = "/proxy/cl-a/80", "10.0.0.2:80"
    assert rewrite_location("/x?y=1", prefix, internal) == "/proxy/cl-a/80/x?y=1"
    assert rewrite_location("http://10.0.0.2:80/p?q=1", prefix, internal) == "/proxy/cl-a/80/p?q=1"
    assert rewrite_location("https://other/p", prefix, internal) == "https://other/p"
    assert rewrite_location("relative", prefix, internal) == "relative"
    assert strip_proxy_prefix("/proxy/cl-a/80/x", "cl-a", 80) == "/x"
    assert strip_proxy_prefix("/proxy/cl-a/80", "cl-a", 80) == "/"


async def test_forwarding_keeps_method_path_query_body(client: AgentClient, upstream: int) -> None:
    status, _, body = await _fetch(
        client, upstream, "/echo/a%20b/?x=1&y=2", "POST", headers=[("X-Custom", "v")], content=b"payload"
    )
    assert status == 200
    seen = json.loads(body)
    assert seen["method"] == "POST"
    assert seen["path"] == "/echo/a%20b/?x=1&y=2"
    assert seen["body"] == "payload"
    assert seen["headers"]["host"] == f"127.0.0.1:{upstream}"
    assert seen["headers"]["x-custom"] == "v"
    assert "x-forwarded-for" in seen["headers"]
    assert "accept-encoding" not in seen["headers"]  # no compression negotiation added


async def test_streamed_request_body(client: AgentClient, upstream: int) -> None:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"part{i};".encode()

    status, _, body = await _fetch(client, upstream, "/stream", "PUT", content=gen())
    assert status == 200
    assert json.loads(body)["body"] == "part0;part1;part2;"


async def test_location_rewriting(client: AgentClient, upstream: int) -> None:
    prefix = f"/proxy/{SID}/{upstream}"
    _, headers, _ = await _fetch(client, upstream, "/redir/rel")
    assert headers["location"] == f"{prefix}/landing?x=1"
    _, headers, _ = await _fetch(client, upstream, "/redir/abs")
    assert headers["location"] == f"{prefix}/abs/path?q=2"
    assert strip_proxy_prefix(headers["location"], SID, upstream) == "/abs/path?q=2"
    _, headers, _ = await _fetch(client, upstream, "/redir/foreign")
    assert headers["location"] == "https://example.com/elsewhere"


async def test_bad_paths_unknown_sandbox_and_dead_port(client: AgentClient, agent: AgentThread, ca) -> None:
    pool = client._current().http
    base = f"https://{agent.address}"
    assert (await pool.get(f"{base}/proxy/{SID}")).status_code == 400
    assert (await pool.get(f"{base}/proxy/{SID}/0/")).status_code == 400
    assert (await pool.get(f"{base}/proxy/{SID}/70000/")).status_code == 400
    assert (await pool.get(f"{base}/proxy/{SID}/http/")).status_code == 400
    resp = await pool.get(f"{base}/proxy/cl-unknown/80/")
    assert resp.status_code == 503 and resp.text == "sandbox is not available"
    started = time.monotonic()
    status, _, body = await _fetch(client, _free_port(), "/")
    assert status == 502 and body.startswith(b"proxy error:")
    assert time.monotonic() - started >= 0.3  # three dial attempts, 100 ms and 200 ms apart


async def test_dial_retry_reaches_late_listener(client: AgentClient) -> None:
    port = _free_port()
    httpd: list[ThreadingHTTPServer] = []
    ready = threading.Event()

    def start_late() -> None:
        time.sleep(0.05)
        httpd.append(ThreadingHTTPServer(("127.0.0.1", port), Upstream))
        ready.set()
        httpd[0].serve_forever()

    thread = threading.Thread(target=start_late, daemon=True)
    thread.start()
    try:
        status, _, body = await _fetch(client, port, "/late")
        assert status == 200 and json.loads(body)["path"] == "/late"
    finally:
        await asyncio.to_thread(ready.wait, 5)
        httpd[0].shutdown()
        httpd[0].server_close()


async def test_websocket_through_proxy(client: AgentClient) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for msg in ws:
            await ws.send(msg)

    async with serve(echo, "127.0.0.1", 0, subprotocols=["chat"]) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await client.proxy_websocket(SID, port, "/ws?x=1", subprotocols=["chat"])
        try:
            assert ws.subprotocol == "chat"
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01")
            assert await ws.recv() == b"\x00\x01"
        finally:
            await ws.close()


async def test_websocket_to_unknown_sandbox_fails(client: AgentClient) -> None:
    with pytest.raises(AgentError) as exc:
        await client.proxy_websocket("cl-unknown", 80, "/")
    assert exc.value.code == "unavailable"
