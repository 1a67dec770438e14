"""The Host-header port proxy as a pure ASGI middleware in front of routing (control-plane.md §12, §20.4).

Requests for ``{port}-{capsule_id}.{domain}`` never reach the API router (so ``/api/kernels`` on a proxy
host is Jupyter's, not ours); everything else passes through untouched.

Errors, with the usual JSON envelope (a WebSocket upgrade is refused with the same HTTP status):
bad port or ID → 400; missing/invalid credentials → 401 (see ``service`` for the policy); unknown capsule
or another team's → 404; not running → 409; host without address → 503; the capsule port not answering
(or the agent unreachable) → 502, so the SDK's code runner keeps retrying while Jupyter starts.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import ApiError, InvalidState
from app.core.state import AppState
from app.proxy import forward, service
from app.proxy.forward import UpstreamFailure

log = logging.getLogger("wrenn.proxy")


def _host(scope: Scope) -> str:
    for key, value in scope.get("headers", []):
        if key == b"host":
            return str(value.decode("latin-1"))
    return ""


class PortProxyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = _host(scope)
        state: AppState | None = getattr(scope["app"].state, "wrenn", None) if host[:1].isdigit() else None
        target = service.match_host(host, state.settings.proxy_domain) if state is not None else None
        if state is None or target is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
        try:
            await proxy(state, target, dict(scope), receive, send)
        except ApiError as exc:
            await _refuse(scope, send, exc)


async def proxy(state: AppState, target: service.ProxyTarget, scope: dict[str, Any], receive: Receive,
                send: Send) -> None:
    port, capsule_id = target.validate()
    who = await service.caller(state, HTTPConnection(scope))
    found = await service.route(state, capsule_id, target.ref)
    service.authorize(who, found, target.ref)
    client = service.client_for(state, found)
    websocket = scope["type"] == "websocket"
    headers = service.forward_headers(scope["headers"], websocket=websocket)
    headers += _forwarded(scope)
    try:
        if websocket:
            upstream = await forward.open_websocket(scope, client, target.ref, port, headers)
            service.note_activity(state, found)
            async with upstream:
                await forward.relay_websocket(receive, send, upstream)
        else:
            service.note_activity(state, found)
            await forward.forward_http(scope, receive, send, client, target.ref, port, headers)
    except UpstreamFailure as exc:
        raise await _upstream_error(state, found, target, exc) from exc


def _forwarded(scope: dict[str, Any]) -> list[tuple[str, str]]:
    client = scope.get("client")
    proto = "https" if scope.get("scheme") in ("https", "wss") else "http"
    out = [("x-forwarded-host", _host(scope)), ("x-forwarded-proto", proto)]
    if client:
        out.append(("x-forwarded-for", str(client[0])))
    return out


async def _upstream_error(state: AppState, found: service.Route, target: service.ProxyTarget,
                          exc: UpstreamFailure) -> ApiError:
    """Drop the cached route; a capsule that stopped running since it was cached is a 409."""
    service.drop_route(state, found.capsule_id)
    if exc.status == 503:
        try:
            await service.route(state, found.capsule_id, target.ref, fresh=True)
        except ApiError as fresh:
            return fresh if isinstance(fresh, InvalidState) else ApiError(exc.message, code="agent_error",
                                                                          status=502)
    return ApiError(exc.message, code="agent_error", status=502)


async def _refuse(scope: Scope, send: Send, exc: ApiError) -> None:
    body = orjson.dumps(exc.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008 if exc.status < 500 else 1011})
