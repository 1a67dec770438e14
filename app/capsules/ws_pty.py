"""The PTY WebSocket (sdk-wire.md §10.3, 0.3.0 framing; control-plane.md §11).

First client message ``start`` (new terminal, tag ``pty-<8 hex>`` chosen here) or ``connect`` (reattach by
tag). Terminal output goes to the client as binary frames; binary client frames are stdin (the spec's
``{"type":"input","data":<base64>}`` is accepted too). ``resize`` and ``kill`` become RPCs with a 5 s
limit, run in order by one worker that coalesces consecutive inputs; at most 64 client messages wait
(excess dropped with a non-fatal error). ``{"type":"ping"}`` every ``ping_interval`` seconds.

The PTY process survives a dropped socket: closing only ends this attachment (reattach with ``connect``).
When the client goes away, the messages it already sent (typically a final ``kill``) are still applied.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from app.capsules import service
from app.capsules.ws import Channel, first_message, parse_json
from app.core import ids
from app.hostagent.client import AgentError
from app.hostagent.proto import hostagent_pb2 as pb

log = logging.getLogger("wrenn.capsules.pty")

RPC_LIMIT = 5.0
INBOUND_LIMIT = 64
DRAIN_LIMIT = 15.0
EXIT_GRACE = 3.0  # after ``exit``: time for the client's closing ``kill`` before we close the socket
DEFAULT_CMD, DEFAULT_COLS, DEFAULT_ROWS = "/bin/bash", 80, 24
MAX_DIMENSION = 65535


@dataclass
class Item:
    kind: Literal["input", "resize", "kill"]
    data: bytes = b""
    cols: int = 0
    rows: int = 0


class InputQueue:
    """Bounded FIFO of client requests; ``get`` merges consecutive inputs into one."""

    def __init__(self, limit: int = INBOUND_LIMIT) -> None:
        self.items: deque[Item] = deque()
        self.limit = limit
        self.closed = False
        self._ready = asyncio.Event()

    def put(self, item: Item) -> bool:
        if len(self.items) >= self.limit:
            return False
        self.items.append(item)
        self._ready.set()
        return True

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self) -> Item | None:
        """The next request, or None once closed and drained."""
        while not self.items:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        item = self.items.popleft()
        if item.kind == "input":
            chunks = [item.data]
            while self.items and self.items[0].kind == "input":
                chunks.append(self.items.popleft().data)
            item = Item("input", b"".join(chunks))
        return item


# --- the first message -------------------------------------------------------------------------


def _dimension(value: Any, default: int) -> int | None:
    if value is None or value == 0:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_DIMENSION:
        return None
    return value


def _string_map(value: Any) -> dict[str, str] | None:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    return value


def _start_request(ref: str, message: dict[str, Any]) -> pb.PtyAttachRequest | str:
    cmd = message.get("cmd") or DEFAULT_CMD
    args, cwd = message.get("args") or [], message.get("cwd") or ""
    cols, rows = _dimension(message.get("cols"), DEFAULT_COLS), _dimension(message.get("rows"), DEFAULT_ROWS)
    envs = _string_map(message.get("envs"))
    if not isinstance(cmd, str) or not isinstance(cwd, str) or envs is None or cols is None or rows is None:
        return "invalid start message: cmd/cwd must be strings, envs a string map, cols/rows positive integers"
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return "invalid start message: args must be a list of strings"
    tag = f"pty-{ids.random_hex(4)}"
    return pb.PtyAttachRequest(sandbox_id=ref, tag=tag, cmd=cmd, args=args, cols=cols, rows=rows, envs=envs,
                               cwd=cwd)


def attach_request(ref: str, message: dict[str, Any]) -> pb.PtyAttachRequest | str:
    """The PtyAttach request for a ``start``/``connect`` message, or an error text."""
    kind = message.get("type")
    if kind == "start":
        return _start_request(ref, message)
    if kind == "connect":
        tag = message.get("tag")
        if not isinstance(tag, str) or not tag or len(tag) > 128:
            return "invalid connect message: tag required"
        return pb.PtyAttachRequest(sandbox_id=ref, tag=tag)
    return 'expected {"type":"start",…} or {"type":"connect","tag":…} as the first message'


# --- agent → client ------------------------------------------------------------------------------


async def pump_output(ch: Channel, events: AsyncIterator[pb.PtyAttachResponse], tag: str,
                      ready: asyncio.Event) -> None:
    """started/output/exited → JSON ``started``, binary output, JSON ``exit``; failures are fatal errors.

    ``ready`` is set once the process exists (its ``started`` event), so queued input can be applied.
    """
    try:
        async with contextlib.aclosing(events) as stream:  # type: ignore[type-var]
            async for event in stream:
                kind = event.WhichOneof("event")
                ready.set()
                if kind == "started":
                    await ch.json({"type": "started", "tag": event.started.tag or tag, "pid": event.started.pid})
                elif kind == "output" and event.output.data:
                    await ch.binary(event.output.data)
                elif kind == "exited":
                    await ch.json({"type": "exit", "exit_code": event.exited.exit_code})
                    return
    except AgentError as exc:
        await ch.json({"type": "error", "data": exc.message or exc.code, "fatal": True})
        return
    await ch.json({"type": "error", "data": "the terminal stream ended unexpectedly", "fatal": True})


async def pings(ch: Channel, interval: float) -> None:
    """Keepalive until cancelled; stops quietly (without finishing) once a send fails."""
    with contextlib.suppress(Exception):
        while True:
            await asyncio.sleep(interval)
            await ch.json({"type": "ping"})
    await asyncio.Event().wait()


# --- client → agent ------------------------------------------------------------------------------


def classify(message: dict[str, Any]) -> Item | str | None:
    """A client frame → a request, an error text (non-fatal), or None (ignored: pong, unknown)."""
    if message.get("bytes") is not None:
        return Item("input", message["bytes"]) if message["bytes"] else None
    body = parse_json(message)
    if body is None:
        return "invalid message: expected a JSON object or a binary frame"
    kind = body.get("type")
    if kind == "input":
        try:
            data = base64.b64decode(str(body.get("data") or ""), validate=True)
        except (binascii.Error, ValueError):
            return "invalid input message: data must be base64"
        return Item("input", data) if data else None
    if kind == "resize":
        cols, rows = _dimension(body.get("cols"), 0), _dimension(body.get("rows"), 0)
        if not cols or not rows:
            return "invalid resize message: cols and rows must be positive integers"
        return Item("resize", cols=cols, rows=rows)
    if kind == "kill":
        return Item("kill")
    return None


async def _notify(ch: Channel, text: str) -> None:
    with contextlib.suppress(Exception):
        await ch.json({"type": "error", "data": text, "fatal": False})


async def read_client(ch: Channel, queue: InputQueue) -> None:
    """Client frames → the queue until the client goes away."""
    try:
        while True:
            message = await ch.receive()
            if message["type"] == "websocket.disconnect":
                return
            item = classify(message)
            if isinstance(item, str):
                await _notify(ch, item)
            elif item is not None and not queue.put(item):
                await _notify(ch, "input dropped: the terminal is not keeping up")
    finally:
        queue.close()


class Rpcs:
    """The input/resize/kill RPCs of one terminal, each limited to 5 s."""

    def __init__(self, target: service.Target, tag: str) -> None:
        self.client, self.ref, self.tag = target.client, target.ref, tag

    async def apply(self, item: Item) -> None:
        client, ref, tag = self.client, self.ref, self.tag
        if item.kind == "input":
            call = client.pty_send_input(pb.PtySendInputRequest(sandbox_id=ref, tag=tag, data=item.data), RPC_LIMIT)
        elif item.kind == "resize":
            call = client.pty_resize(pb.PtyResizeRequest(sandbox_id=ref, tag=tag, cols=item.cols, rows=item.rows),
                                     RPC_LIMIT)
        else:
            call = client.pty_kill(pb.PtyKillRequest(sandbox_id=ref, tag=tag), RPC_LIMIT)
        await asyncio.wait_for(call, RPC_LIMIT)


async def apply_requests(ch: Channel, queue: InputQueue, rpcs: Rpcs, ready: asyncio.Event) -> None:
    """Run queued requests in order, once the process exists, until the queue is closed and drained."""
    await ready.wait()  # input typed right after ``start`` must wait for the process, not be lost
    while (item := await queue.get()) is not None:
        try:
            await rpcs.apply(item)
        except (AgentError, TimeoutError) as exc:
            if item.kind == "kill" or (isinstance(exc, AgentError) and exc.code == "not_found"):
                continue  # a late or duplicate kill, or input after the process ended
            text = exc.message if isinstance(exc, AgentError) else "timed out"
            await _notify(ch, f"{item.kind} failed: {text}")


async def client_side(ch: Channel, queue: InputQueue, rpcs: Rpcs, ready: asyncio.Event) -> None:
    await asyncio.gather(read_client(ch, queue), apply_requests(ch, queue, rpcs, ready))


# --- the session ---------------------------------------------------------------------------------


async def pty_body(ch: Channel, target: service.Target, ping_interval: float) -> None:
    message = await first_message(ch)
    if message is None:
        return
    request = attach_request(target.ref, message)
    if isinstance(request, str):
        await ch.json({"type": "error", "data": request, "fatal": True})
        return
    queue = InputQueue()
    ready = asyncio.Event()
    if not request.cmd:
        ready.set()  # reattach: the process exists already
    output = asyncio.ensure_future(pump_output(ch, target.client.pty_attach(request), request.tag, ready))
    client = asyncio.ensure_future(client_side(ch, queue, Rpcs(target, request.tag), ready))
    keepalive = asyncio.ensure_future(pings(ch, ping_interval))
    try:
        await asyncio.wait({output, client}, return_when=asyncio.FIRST_COMPLETED)
        if output.done() and ready.is_set() and not client.done():
            # The process exited (or sending failed): the client may still send its closing ``kill``
            # (the SDK always does) and close; let it, rather than racing it with our own close.
            grace = EXIT_GRACE if output.exception() is None else DRAIN_LIMIT
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(client), grace)
    finally:
        for task in (output, client, keepalive):
            task.cancel()
        results = await asyncio.gather(output, client, keepalive, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            log.debug("pty task on %s ended with %s: %s", target.ref, type(result).__name__, result)
