"""Forwarding one proxied request through the owning agent's ``/proxy/{id}/{port}{path}`` endpoint.

HTTP: request and response bodies are streamed (chunked both ways, nothing buffered), the response's
``Location`` loses the agent's prefix, and a client that goes away cancels the upstream response.
WebSocket: the upstream socket is opened first (so a failure can still be an HTTP error), then the
incoming one is accepted with the subprotocol the capsule chose and frames are relayed one by one.

Failures of the agent's proxy itself (its ``proxy error`` 502 or ``sandbox is not available`` 503) are
reported as ``UpstreamFailure`` so the caller can drop the cached route and answer with the envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import websockets
from starlette.types import Receive, Send
from websockets.asyncio.client import ClientConnection

from app.hostagent.client import AgentClient, AgentError, strip_proxy_prefix

log = logging.getLogger("wrenn.proxy")

RESPONSE_SKIP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer",
                           "proxy-connection"})
AGENT_ERROR_MAX = 512


class UpstreamFailure(Exception):
    """The agent could not reach the capsule port (``status`` 502) or the capsule (503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def path_and_query(scope: dict[str, Any]) -> str:
    raw = scope.get("raw_path") or scope["path"].encode()
    path = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
    query = scope.get("query_string", b"").decode("latin-1")
    return path + (f"?{query}" if query else "")


def _has_body(scope: dict[str, Any]) -> bool:
    for key, value in scope["headers"]:
        if key == b"transfer-encoding" or (key == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


# --- HTTP --------------------------------------------------------------------------------------------


class _Body:
    """The request body as an async iterator; ``done`` is set once it has been read to the end."""

    def __init__(self, receive: Receive, present: bool) -> None:
        self.receive = receive
        self.done = asyncio.Event()
        if not present:
            self.done.set()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    return
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    return
        finally:
            self.done.set()

    async def disconnected(self) -> None:
        """Return when the client goes away (only watched once the body has been consumed)."""
        await self.done.wait()
        while (await self.receive())["type"] != "http.disconnect":
            pass


async def _prefetch_agent_error(resp: httpx.Response) -> bytes | None:
    """The raw body of a small text/plain 502/503 (possibly the agent's own error), else None (unread)."""
    if resp.status_code not in (502, 503) or not resp.headers.get("content-type", "").startswith("text/plain"):
        return None
    length = resp.headers.get("content-length", "")
    if not length.isdigit() or int(length) > AGENT_ERROR_MAX:
        return None
    return b"".join([chunk async for chunk in resp.aiter_raw()])


def _agent_failure(resp: httpx.Response, raw: bytes | None) -> str | None:
    """The agent proxy's own error text ("proxy error: …", "sandbox is not available"), if that is what this is."""
    if raw is None or resp.headers.get("content-encoding"):
        return None
    text = raw.decode("utf-8", "replace")
    return text if text.startswith("proxy error") or text == "sandbox is not available" else None


async def forward_http(scope: dict[str, Any], receive: Receive, send: Send, client: AgentClient, ref: str,
                       port: int, headers: list[tuple[str, str]]) -> None:
    has_body = _has_body(scope)
    body = _Body(receive, has_body)
    try:
        resp = await client.proxy_request(ref, port, scope["method"], path_and_query(scope), headers,
                                          body.chunks() if has_body else None)
    except AgentError as exc:
        raise UpstreamFailure(502, f"capsule port {port} is not reachable: {exc.message}") from exc
    try:
        prefetched = await _prefetch_agent_error(resp)
        failure = _agent_failure(resp, prefetched)
        if failure is not None:
            raise UpstreamFailure(resp.status_code, failure)
        streaming = asyncio.ensure_future(_relay_response(send, resp, ref, port, prefetched))
        watcher = asyncio.ensure_future(body.disconnected())
        try:
            await asyncio.wait({streaming, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not streaming.done():
                streaming.cancel()  # the client went away: stop reading from the capsule
            await asyncio.gather(streaming, watcher, return_exceptions=True)
    finally:
        await resp.aclose()


def _response_headers(resp: httpx.Response, ref: str, port: int) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for key, value in resp.headers.raw:
        name = key.decode("latin-1").lower()
        if name in RESPONSE_SKIP:
            continue
        if name == "location":
            value = strip_proxy_prefix(value.decode("latin-1"), ref, port).encode("latin-1")
        out.append((key, value))
    return out


async def _relay_response(send: Send, resp: httpx.Response, ref: str, port: int, prefetched: bytes | None) -> None:
    await send({"type": "http.response.start", "status": resp.status_code,
                "headers": _response_headers(resp, ref, port)})
    if prefetched is not None:
        await send({"type": "http.response.body", "body": prefetched, "more_body": False})
        return
    try:
        async for chunk in resp.aiter_raw():
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except httpx.HTTPError as exc:
        # Ending without the final message makes the server drop the connection: the client sees
        # a truncated response instead of a falsely complete one.
        log.info("proxied response from %s:%d broke off: %s", ref, port, exc)
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


# --- WebSocket ---------------------------------------------------------------------------------------


async def open_websocket(scope: dict[str, Any], client: AgentClient, ref: str, port: int,
                         headers: list[tuple[str, str]]) -> ClientConnection:
    try:
        return await client.proxy_websocket(ref, port, path_and_query(scope), headers,
                                            list(scope.get("subprotocols") or []) or None)
    except AgentError as exc:
        cause = exc.__cause__
        status = cause.response.status_code if isinstance(cause, websockets.InvalidStatus) else 502
        raise UpstreamFailure(503 if status == 503 else 502,
                              f"capsule port {port} is not reachable: {exc.message}") from exc


async def relay_websocket(receive: Receive, send: Send, upstream: ClientConnection) -> None:
    """Accept the client's socket and relay frames both ways until either side closes."""
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
    tasks = [asyncio.ensure_future(_client_to_capsule(receive, upstream)),
             asyncio.ensure_future(_capsule_to_client(send, upstream))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await upstream.close()


async def _client_to_capsule(receive: Receive, upstream: ClientConnection) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            code = int(message.get("code") or 1000)
            await upstream.close(code if code in (1000, 1001) or 3000 <= code < 5000 else 1000)
            return
        if message.get("bytes") is not None:
            await upstream.send(message["bytes"])
        elif message.get("text") is not None:
            await upstream.send(message["text"])


async def _capsule_to_client(send: Send, upstream: ClientConnection) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async for message in upstream:
            key = "bytes" if isinstance(message, bytes) else "text"
            await send({"type": "websocket.send", key: message})
    code = upstream.close_code or 1000
    with contextlib.suppress(Exception):
        await send({"type": "websocket.close", "code": 1000 if code in (1005, 1006) else code,
                    "reason": upstream.close_reason or ""})
