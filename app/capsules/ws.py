"""Capsule WebSockets (sdk-wire.md §10, control-plane.md §11): exec stream, process connect and PTY.

Every route authenticates and checks the capsule (found, running, host reachable) *before* the upgrade;
a refusal is an ordinary error response (401/403/404/409/503 with the JSON envelope) through the ASGI
WebSocket denial extension. Everything that happens after the upgrade is reported inside the socket.
The admin variants under ``/v1/admin/capsules/{id}/…`` reuse the handlers for any team's capsule.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, WebSocket
from starlette.requests import HTTPConnection

from app.auth.deps import require_platform_admin, session_identity, team_caller
from app.auth.identity import Identity
from app.capsules import ops, service
from app.core.errors import ApiError, Forbidden
from app.core.http import ORJSONResponse
from app.core.state import AppState, get_state
from app.hostagent.client import AgentError
from app.hostagent.proto import hostagent_pb2 as pb

log = logging.getLogger("wrenn.capsules.ws")

router = APIRouter(tags=["capsules"])

FIRST_MESSAGE_TIMEOUT = 30.0
MAX_ARGS = 10_000


# --- authentication before the upgrade ---------------------------------------------------------


def _same_origin(conn: HTTPConnection) -> bool:
    """Cookie-authenticated sockets must come from our own pages (no cross-site WebSocket hijacking)."""
    origin = conn.headers.get("origin")
    if not origin:
        return True
    netloc = urlsplit(origin).netloc.lower()
    settings = get_state(conn).settings
    allowed = {conn.headers.get("host", "").lower()}
    allowed |= {urlsplit(u).netloc.lower() for u in (settings.public_url, settings.frontend_url) if u}
    return netloc in allowed


async def ws_team_caller(conn: HTTPConnection) -> Identity:
    who = await team_caller(conn)
    if who.kind == "session" and not _same_origin(conn):
        raise Forbidden("cross-origin WebSocket refused")
    return who


async def ws_platform_admin(conn: HTTPConnection) -> Identity:
    """A platform admin's session (re-read from the database); works on WebSocket upgrades."""
    who = await require_platform_admin(get_state(conn), await session_identity(conn))
    if not _same_origin(conn):
        raise Forbidden("cross-origin WebSocket refused")
    return who


async def _deny(ws: WebSocket, exc: ApiError) -> None:
    response = ORJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
    try:
        await ws.send_denial_response(response)
    except RuntimeError:  # server without the denial extension: a close before accept is a 403
        await ws.close(1008)


async def _open(ws: WebSocket, ref: str, admin: bool, check: Callable[[], None] | None = None) -> service.Target | None:
    """Authenticate, validate, resolve the capsule; accept on success, deny (HTTP error) otherwise."""
    state = get_state(ws)
    try:
        who = None if admin else await ws_team_caller(ws)
        if admin:
            await ws_platform_admin(ws)
        if check is not None:
            check()
        target = await service.target(state, who, ref)
    except ApiError as exc:
        await _deny(ws, exc)
        return None
    await ws.accept()
    return target


# --- the socket once accepted ------------------------------------------------------------------


class Channel:
    """Serialised sends (several tasks write to one socket) and raw receives."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._lock = asyncio.Lock()
        self.closed = False

    async def json(self, message: dict[str, Any]) -> None:
        await self._send({"type": "websocket.send", "text": orjson.dumps(message).decode()})

    async def binary(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def _send(self, message: dict[str, Any]) -> None:
        async with self._lock:
            await self.ws.send(message)

    async def receive(self) -> dict[str, Any]:
        """The next ASGI message; ``websocket.disconnect`` once the client is gone (then forever)."""
        if self.closed:
            return {"type": "websocket.disconnect", "code": 1000}
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            self.closed = True
        return dict(message)

    async def close(self, code: int = 1000) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            async with self._lock:
                await self.ws.close(code)


def parse_json(message: dict[str, Any]) -> dict[str, Any] | None:
    """A text frame holding a JSON object, else None."""
    text = message.get("text")
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


async def first_message(ch: Channel) -> dict[str, Any] | None:
    """The client's first message: a JSON object, ``{}`` for garbage/timeout, None if it went away."""
    try:
        message = await asyncio.wait_for(ch.receive(), FIRST_MESSAGE_TIMEOUT)
    except TimeoutError:
        return {}
    if message["type"] == "websocket.disconnect":
        return None
    return parse_json(message) or {}


async def race(*coros: Coroutine[Any, Any, None]) -> None:
    """Run until the first coroutine finishes (or fails); cancel and await the others."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.debug("websocket task ended with %s: %s", type(exc).__name__, exc)


async def session(ws: WebSocket, target: service.Target, body: Callable[[Channel], Awaitable[None]]) -> None:
    """Run ``body`` on an accepted socket: never crash, always close, record activity at the end."""
    state: AppState = get_state(ws)
    ch = Channel(ws)
    try:
        await body(ch)
    except Exception as exc:  # the socket must end with a message, not a dropped connection
        log.exception("websocket session on %s failed", target.ref)
        with contextlib.suppress(Exception):
            await ch.json({"type": "error", "data": f"internal error: {type(exc).__name__}"})
    finally:
        await ch.close()
        service.spawn(state, service.touch(state, target.capsule.id), f"touch:{target.capsule.id}")


# --- exec stream and process connect (§10.1, §10.2) --------------------------------------------


class _Decoders:
    """UTF-8 with replacement, per stream, keeping multi-byte characters split across chunks intact."""

    def __init__(self) -> None:
        self.streams = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")}

    def decode(self, name: str, data: bytes, final: bool = False) -> str:
        return str(self.streams[name].decode(data, final))

    def flush(self) -> list[tuple[str, str]]:
        return [(name, text) for name in self.streams if (text := self.decode(name, b"", True))]


async def pump_exec_events(ch: Channel, events: AsyncIterator[Any]) -> None:
    """ExecStream/ConnectProcess events → start/stdout/stderr/exit/error JSON messages."""
    decoders = _Decoders()
    try:
        async with contextlib.aclosing(events) as stream:  # type: ignore[type-var]
            async for event in stream:
                if await _forward_exec_event(ch, decoders, event):
                    return
    except AgentError as exc:
        await ch.json({"type": "error", "data": exc.message or exc.code})
        return
    await ch.json({"type": "error", "data": "the process stream ended without an exit status"})


async def _forward_exec_event(ch: Channel, decoders: _Decoders, event: Any) -> bool:
    """Send one event; True once the stream is finished."""
    kind = event.WhichOneof("event")
    if kind == "start":
        await ch.json({"type": "start", "pid": event.start.pid})
    elif kind == "data":
        name = event.data.WhichOneof("output")
        if name in ("stdout", "stderr"):
            text = decoders.decode(name, getattr(event.data, name))
            if text:
                await ch.json({"type": name, "data": text})
    elif kind == "end":
        for name, text in decoders.flush():
            await ch.json({"type": name, "data": text})
        if event.end.error:
            await ch.json({"type": "error", "data": event.end.error})
        else:
            await ch.json({"type": "exit", "exit_code": event.end.exit_code})
        return True
    return False


async def watch_client(ch: Channel, stop_types: tuple[str, ...] = ()) -> None:
    """Return when the client disconnects (or sends one of ``stop_types``); ignore everything else."""
    while True:
        message = await ch.receive()
        if message["type"] == "websocket.disconnect":
            return
        if stop_types and (parse_json(message) or {}).get("type") in stop_types:
            return


def _start_request(message: dict[str, Any]) -> tuple[str, list[str]] | None:
    cmd, args = message.get("cmd"), message.get("args") or []
    if message.get("type") != "start" or not isinstance(cmd, str) or not cmd:
        return None
    if not isinstance(args, list) or len(args) > MAX_ARGS or not all(isinstance(a, str) for a in args):
        return None
    return cmd, args


async def exec_stream_body(ch: Channel, target: service.Target) -> None:
    message = await first_message(ch)
    if message is None:
        return
    parsed = _start_request(message)
    if parsed is None:
        await ch.json({"type": "error", "data": 'expected {"type":"start","cmd":…,"args":[…]} as the first message'})
        return
    request = pb.ExecStreamRequest(sandbox_id=target.ref, cmd=parsed[0], args=parsed[1], timeout_sec=0)
    await race(pump_exec_events(ch, target.client.exec_stream(request)), watch_client(ch, ("stop",)))


async def process_stream_body(ch: Channel, target: service.Target, selector: str) -> None:
    pid, tag = ops.parse_selector(selector)
    request = pb.ConnectProcessRequest(sandbox_id=target.ref)
    if pid is not None:
        request.pid = pid
    else:
        request.tag = tag or ""
    await race(pump_exec_events(ch, target.client.connect_process(request)), watch_client(ch))


# --- routes --------------------------------------------------------------------------------------


async def exec_stream(ws: WebSocket, capsule_id: str, admin: bool = False) -> None:
    target = await _open(ws, capsule_id, admin)
    if target is not None:
        await session(ws, target, lambda ch: exec_stream_body(ch, target))


async def process_stream(ws: WebSocket, capsule_id: str, selector: str, admin: bool = False) -> None:
    target = await _open(ws, capsule_id, admin, check=lambda: _check_selector(selector))
    if target is not None:
        await session(ws, target, lambda ch: process_stream_body(ch, target, selector))


def _check_selector(selector: str) -> None:
    ops.parse_selector(selector)


async def pty(ws: WebSocket, capsule_id: str, admin: bool = False) -> None:
    from app.capsules.ws_pty import pty_body

    target = await _open(ws, capsule_id, admin)
    if target is not None:
        settings = get_state(ws).settings
        await session(ws, target, lambda ch: pty_body(ch, target, settings.pty_ping_interval_sec))


@router.websocket("/v1/capsules/{capsule_id}/exec/stream")
async def exec_stream_ws(websocket: WebSocket, capsule_id: str) -> None:
    await exec_stream(websocket, capsule_id)


@router.websocket("/v1/capsules/{capsule_id}/processes/{selector}/stream")
async def process_stream_ws(websocket: WebSocket, capsule_id: str, selector: str) -> None:
    await process_stream(websocket, capsule_id, selector)


@router.websocket("/v1/capsules/{capsule_id}/pty")
async def pty_ws(websocket: WebSocket, capsule_id: str) -> None:
    await pty(websocket, capsule_id)


@router.websocket("/v1/admin/capsules/{capsule_id}/exec/stream")
async def admin_exec_stream_ws(websocket: WebSocket, capsule_id: str) -> None:
    await exec_stream(websocket, capsule_id, admin=True)


@router.websocket("/v1/admin/capsules/{capsule_id}/processes/{selector}/stream")
async def admin_process_stream_ws(websocket: WebSocket, capsule_id: str, selector: str) -> None:
    await process_stream(websocket, capsule_id, selector, admin=True)


@router.websocket("/v1/admin/capsules/{capsule_id}/pty")
async def admin_pty_ws(websocket: WebSocket, capsule_id: str) -> None:
    await pty(websocket, capsule_id, admin=True)
