"""One reader of ``wrenn:events`` per process, fanning out to in-process SSE subscribers.

* The reader (``EventHub``) blocks on ``XREAD`` from the last ID it saw, so a Redis hiccup loses nothing:
  it reconnects and continues from that ID.
* Each subscriber has a bounded buffer. The reader never waits for a subscriber: when a buffer is full the
  subscriber is closed (reason ``overflow``), its buffer dropped, and its stream ends with a comment saying so;
  the client reconnects with ``Last-Event-ID`` and is replayed what it missed from the stream.
* Events are hydrated (``sandbox`` for capsule events, §13.5) once per event, and only when at least one
  subscriber will receive it.
* Resume: ``replay`` reads the stream after a given ID with ``XRANGE``; stream IDs are the SSE ``id:``, so
  any replica can resume any client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError

from app.core import ids
from app.core.state import AppState
from app.events.service import SSE_EVENTS, STREAM

log = logging.getLogger("wrenn.events.hub")

READ_BLOCK_MS = 2000
READ_COUNT = 200
REPLAY_BATCH = 500
RECONNECT_DELAY = 1.0
# For system-actor success events the DB writer may lag behind the event; show the implied state.
# Events outside the spec's SSEEvent enum that the admin stream relays (see ``Subscriber.wants``).
ADMIN_EVENT_PREFIXES = ("build.",)
IMPLIED_STATUS = {"capsule.pause": "paused", "capsule.create": "running", "capsule.resume": "running"}


@dataclass(frozen=True)
class Frame:
    """One SSE event ready to send: stream ID, event name, JSON data."""

    id: str
    event: str
    data: str


@dataclass(eq=False)
class Subscriber:
    team_id: str | None  # ``team-…``; None = every team (platform admin stream)
    limit: int
    frames: deque[Frame] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: str | None = None  # why the hub cut this subscriber off: "overflow" or "shutdown"

    def wants(self, team_id: str, name: str = "") -> bool:
        if name and name not in SSE_EVENTS:
            return self.team_id is None  # admin-only events (e.g. build.*) never reach a team stream
        return self.team_id is None or self.team_id == team_id

    def offer(self, frame: Frame) -> None:
        if self.closed:
            return
        if len(self.frames) >= self.limit:
            self.close("overflow")
        else:
            self.frames.append(frame)
            self.wake.set()

    def close(self, reason: str) -> None:
        self.closed = reason
        self.frames.clear()
        self.wake.set()


def stream_id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def valid_stream_id(value: str) -> bool:
    ms, sep, seq = value.partition("-")
    return bool(sep) and ms.isdigit() and seq.isdigit() and len(value) <= 41


class EventHub:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.subscribers: set[Subscriber] = set()
        self.last_id = "0-0"
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="events-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for sub in list(self.subscribers):
            sub.close("shutdown")

    async def _run(self) -> None:
        redis = self.state.redis
        while True:
            try:
                if not self.ready.is_set():
                    latest: Any = await redis.xrevrange(STREAM, count=1)
                    self.last_id = latest[0][0] if latest else "0-0"
                    self.ready.set()
                reply: Any = await redis.xread({STREAM: self.last_id}, count=READ_COUNT, block=READ_BLOCK_MS)
                for _stream, entries in reply or []:
                    for entry_id, fields in entries:
                        self.last_id = entry_id
                        await self._dispatch(entry_id, fields)
                        await asyncio.sleep(0)  # let subscribers drain between events of a burst
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("event stream read failed (%s); retrying", exc)
                await asyncio.sleep(RECONNECT_DELAY)
            except Exception:
                log.exception("event hub error; continuing after %s", self.last_id)
                await asyncio.sleep(RECONNECT_DELAY)

    async def _dispatch(self, entry_id: str, fields: dict[str, Any]) -> None:
        event = decode(fields)
        if event is None:
            return
        targets = [s for s in self.subscribers if s.wants(event.get("team_id", ""), event["event"])]
        if not targets:
            return
        frame = await self.frame(entry_id, event)
        for sub in targets:
            sub.offer(frame)

    # --- subscribers -------------------------------------------------------------------------

    def subscribe(self, team_id: str | None) -> Subscriber:
        sub = Subscriber(team_id=team_id, limit=max(1, self.state.settings.sse_buffer_events))
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        sub.frames.clear()

    async def replay(self, team_id: str | None, after: str) -> AsyncIterator[Frame]:
        """Events after ``after`` (exclusive) that are still in the stream, oldest first."""
        cursor = f"({after}"
        while True:
            entries: Any = await self.state.redis.xrange(STREAM, min=cursor, max="+", count=REPLAY_BATCH)
            for entry_id, fields in entries:
                event = decode(fields)
                if event is not None and Subscriber(team_id, 0).wants(event.get("team_id", ""), event["event"]):
                    yield await self.frame(entry_id, event)
            if len(entries) < REPLAY_BATCH:
                return
            cursor = f"({entries[-1][0]}"

    async def frame(self, entry_id: str, event: dict[str, Any]) -> Frame:
        name = event["event"]
        if name.startswith("capsule."):
            event = {**event, "sandbox": await self._sandbox(event)}
        return Frame(entry_id, name, orjson.dumps(event).decode())

    async def _sandbox(self, event: dict[str, Any]) -> dict[str, Any] | None:
        from app.capsules.models import Capsule
        from app.capsules.service import capsule_json

        capsule_id = ids.try_decode(ids.CAPSULE, str(event.get("resource", {}).get("id", "")))
        if capsule_id is None:
            return None
        try:
            async with self.state.db() as db:
                capsule = await db.get(Capsule, capsule_id)
        except Exception:
            log.exception("could not hydrate %s", capsule_id)
            return None
        if capsule is None:
            return None
        body = capsule_json(capsule)
        implied = IMPLIED_STATUS.get(event["event"])
        if implied and event.get("outcome") == "success" and event.get("actor", {}).get("type") == "system":
            body["status"] = implied
        return body


def decode(fields: dict[str, Any]) -> dict[str, Any] | None:
    """The event of a stream entry if SSE clients may see it (the SDK rejects unknown names). Names outside the
    spec enum (``ADMIN_EVENT_PREFIXES``: template builds) go to the platform-admin stream only."""
    try:
        event = orjson.loads(fields.get("payload", "{}"))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None
    if event["event"] not in SSE_EVENTS and not event["event"].startswith(ADMIN_EVENT_PREFIXES):
        return None
    return event


def hub_of(state: AppState) -> EventHub:
    hub: EventHub = state.extras["event_hub"]
    return hub


async def start(state: AppState) -> None:
    hub = EventHub(state)
    state.extras["event_hub"] = hub
    await hub.start()


async def stop(state: AppState) -> None:
    hub: EventHub | None = state.extras.pop("event_hub", None)
    if hub is not None:
        await hub.stop()
