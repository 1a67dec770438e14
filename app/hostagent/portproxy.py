"""The agent's port proxy: ``/proxy/{sandbox_id}/{port}/{rest}`` → ``http://<capsule ip>:<port>/<rest>``.

hostagent-wire.md §8. An ASGI app mounted next to the Connect service. HTTP requests are forwarded with
``httpx`` (bodies streamed both ways, no compression negotiation added, 30 s dial timeout, 3 dial
attempts 100 ms / 200 ms apart); ``Location`` headers are rewritten to stay under the prefix.

WebSocket upgrades: ASGI servers terminate the upgrade themselves, so raw byte splicing is not possible.
Instead the proxy opens a client WebSocket to the target first (with the same retries), accepts the
incoming one with the subprotocol the target chose, and relays frames both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

log = logging.getLogger(__name__)

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
TargetResolver = Callable[[str, int], tuple[str, int]]

DIAL_TIMEOUT = 30.0
DIAL_PAUSES = (0.1, 0.2)  # 3 attempts
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)


class ProxyPathError(ValueError):
    pass


def parse_proxy_path(raw_path: str) -> tuple[str, int, str]:
    """``/proxy/{id}/{port}[/rest]`` → (id, port, "/rest"); raises ProxyPathError (→ 400)."""
    if not raw_path.startswith("/proxy/"):
        raise ProxyPathError("path must start with /proxy/")
    parts = raw_path[len("/proxy/") :].split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ProxyPathError("path must be /proxy/{sandbox_id}/{port}/...")
    sandbox_id, port_s = parts[0], parts[1]
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ProxyPathError(f"invalid port {port_s!r}")
    rest = "/" + parts[2] if len(parts) == 3 else "/"
    return sandbox_id, int(port_s), rest


def rewrite_location(location: str, prefix: str, internal: str) -> str:
    """Keep redirects under ``prefix``: root-relative, or absolute to the internal ``ip:port``."""
    if location.startswith("/") and not location.startswith("//"):
        return prefix + location
    parts = urlsplit(location)
    if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc == internal:
        path = parts.path or "/"
        return prefix + path + (f"?{parts.query}" if parts.query else "")
    return location


def forward_headers(raw: list[tuple[bytes, bytes]], client: tuple[str, int] | None) -> list[tuple[bytes, bytes]]:
    """Request headers minus hop-by-hop ones (and those named by ``Connection``), plus X-Forwarded-For."""
    named = {
        token.strip().lower() for k, v in raw if k.lower() == b"connection" for token in v.decode("latin-1").split(",")
    }
    out = [(k, v) for k, v in raw if k.decode("latin-1").lower() not in HOP_BY_HOP | named]
    if client:
        prior = [v.decode("latin-1") for k, v in out if k.lower() == b"x-forwarded-for"]
        out = [(k, v) for k, v in out if k.lower() != b"x-forwarded-for"]
        out.append((b"x-forwarded-for", ", ".join([*prior, client[0]]).encode("latin-1")))
    return out


async def _simple(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return
        if event.get("body"):
            yield event["body"]
        if not event.get("more_body", False):
            return


class PortProxy:
    """ASGI app for ``/proxy/...``; ``resolve(sandbox_id, port)`` gives the target (raises if unavailable)."""

    def __init__(self, resolve: TargetResolver) -> None:
        self.resolve = resolve
        self.http = httpx.AsyncClient(
            http2=False,
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(connect=DIAL_TIMEOUT, read=None, write=None, pool=None),
            limits=httpx.Limits(max_keepalive_connections=20, keepalive_expiry=90),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        if isinstance(raw_path, bytes):
            raw_path = raw_path.decode("latin-1")
        try:
            sandbox_id, port, rest = parse_proxy_path(raw_path.split("?", 1)[0])
        except ProxyPathError as exc:
            return await self._reject(scope, send, 400, str(exc))
        try:
            ip, tport = self.resolve(sandbox_id, port)
        except Exception as exc:
            log.debug("proxy target for %s:%d unavailable: %s", sandbox_id, port, exc)
            return await self._reject(scope, send, 503, "sandbox is not available")
        query = scope.get("query_string", b"").decode("latin-1")
        target = _Target(sandbox_id, port, ip, tport, rest + (f"?{query}" if query else ""))
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send, target)
        else:
            await self._http(scope, receive, send, target)

    async def _reject(self, scope: dict[str, Any], send: Send, status: int, text: str) -> None:
        if scope["type"] == "http":
            return await _simple(send, status, text)
        await _reject_websocket(scope, send, status, text)

    async def _http(self, scope: dict[str, Any], receive: Receive, send: Send, target: _Target) -> None:
        headers = forward_headers(scope["headers"], scope.get("client"))
        headers.append((b"host", target.internal.encode()))
        try:
            resp = await self._send_with_retries(scope["method"], target, scope["headers"], headers, receive)
        except httpx.HTTPError as exc:
            return await _simple(send, 502, f"proxy error: {exc or type(exc).__name__}")
        try:
            out = []
            for k, v in resp.headers.raw:
                name = k.decode("latin-1").lower()
                if name in HOP_BY_HOP:
                    continue
                if name == "location":
                    v = rewrite_location(v.decode("latin-1"), target.prefix, target.internal).encode("latin-1")
                out.append((k, v))
            await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except httpx.HTTPError as exc:
            log.info("proxy upstream broke mid-response: %s", exc)
        finally:
            await resp.aclose()

    async def _send_with_retries(
        self,
        method: str,
        target: _Target,
        headers_in: list[tuple[bytes, bytes]],
        headers: list[tuple[bytes, bytes]],
        receive: Receive,
    ) -> httpx.Response:
        # The request body is only read after the connection is up, so a failed dial can be retried.
        has_body = any(
            k.lower() == b"transfer-encoding" or (k.lower() == b"content-length" and v.strip() != b"0")
            for k, v in headers_in
        )
        for pause in (*DIAL_PAUSES, None):
            body = _request_body(receive) if has_body else None
            request = httpx.Request(method, target.http_url, headers=headers, content=body)
            try:
                return await self.http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if pause is None:
                    raise
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def _websocket(self, scope: dict[str, Any], receive: Receive, send: Send, target: _Target) -> None:
        await receive()  # websocket.connect
        try:
            upstream = await _dial_websocket(scope, target)
        except Exception as exc:
            return await _reject_websocket(scope, send, 502, f"proxy error: {exc}")
        async with upstream:
            await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
            await _relay(receive, send, upstream)


class _Target:
    def __init__(self, sandbox_id: str, port: int, ip: str, tport: int, path_qs: str) -> None:
        self.prefix = f"/proxy/{sandbox_id}/{port}"
        self.internal = f"{ip}:{tport}" if ":" not in ip else f"[{ip}]:{tport}"
        self.http_url = f"http://{self.internal}{path_qs}"
        self.ws_url = f"ws://{self.internal}{path_qs}"


_WS_SKIP = HOP_BY_HOP | {
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "content-length",
}


async def _dial_websocket(scope: dict[str, Any], target: _Target) -> ClientConnection:
    headers = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in scope["headers"]
        if k.decode("latin-1").lower() not in _WS_SKIP
    ]
    subprotocols = scope.get("subprotocols") or None
    for pause in (*DIAL_PAUSES, None):
        try:
            return await websockets.connect(
                target.ws_url,
                additional_headers=headers,
                subprotocols=subprotocols,
                open_timeout=DIAL_TIMEOUT,
                compression=None,
                max_size=None,
                ping_interval=None,
                user_agent_header=None,
            )
        except OSError:
            if pause is None:
                raise
            await asyncio.sleep(pause)
    raise AssertionError("unreachable")


async def _reject_websocket(scope: dict[str, Any], send: Send, status: int, text: str) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        body = text.encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1011, "reason": text[:120]})


async def _relay(receive: Receive, send: Send, upstream: ClientConnection) -> None:
    async def downstream_to_upstream() -> None:
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                await upstream.close(event.get("code", 1000))
                return
            if event.get("bytes") is not None:
                await upstream.send(event["bytes"])
            elif event.get("text") is not None:
                await upstream.send(event["text"])

    async def upstream_to_downstream() -> None:
        try:
            async for msg in upstream:
                key = "bytes" if isinstance(msg, bytes) else "text"
                await send({"type": "websocket.send", key: msg})
        except websockets.ConnectionClosed:
            pass
        code = upstream.close_code or 1000
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code if code != 1005 else 1000})

    tasks = [asyncio.ensure_future(downstream_to_upstream()), asyncio.ensure_future(upstream_to_downstream())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
