"""The one path every lifecycle event takes: ``publish`` appends it to the capped stream ``wrenn:events``
in the spec's SSEEvent shape (control-plane.md §13). Stream IDs double as SSE event IDs.

Readers of the stream: one ``EventHub`` per process (SSE fan-out, app/events/hub.py) and the channel
dispatcher's consumer group (app/channels/delivery.py), which skips entries marked ``transient``."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.auth.identity import Identity
from app.core import clock, ids

log = logging.getLogger("wrenn.events")

STREAM = "wrenn:events"
STREAM_MAXLEN = 10_000
TRANSIENT_EVENTS = {"capsule.state.changed"}
# Durable events channels may subscribe to (spec CreateChannelRequest.events).
CHANNEL_EVENTS = (
    "capsule.create", "capsule.pause", "capsule.resume", "capsule.destroy",
    "template.snapshot.create", "template.snapshot.delete", "host.up", "host.down",
)
# What SSE clients may receive: the spec's SSEEvent enum (the SDK rejects any other name, sdk-wire §9).
# Other names may travel on the stream (e.g. build events) but never reach an SSE client.
SSE_EVENTS = frozenset((*CHANNEL_EVENTS, "capsule.state.changed"))


def actor_of(who: Identity | None) -> dict[str, str]:
    if who is None:
        return {"type": "system"}
    actor = {"type": who.actor_type}
    if who.actor_id:
        actor["id"] = who.actor_id
    if who.actor_name:
        actor["name"] = who.actor_name
    return actor


def make_event(
    name: str,
    team_id: uuid.UUID | None,
    resource_id: str,
    resource_type: str,
    *,
    who: Identity | None = None,
    outcome: str | None = None,
    metadata: dict[str, str] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": name,
        "timestamp": clock.iso(clock.now()),
        "team_id": ids.encode(ids.TEAM, team_id or ids.ZERO_UUID),
        "actor": actor_of(who),
        "resource": {"id": resource_id, "type": resource_type},
    }
    if outcome is not None:
        event["outcome"] = outcome
    if metadata:
        event["metadata"] = {k: str(v) for k, v in metadata.items()}
    if error:
        event["error"] = error
    return event


async def publish(redis: Redis, event: dict[str, Any]) -> str | None:
    """Append to the stream; returns the stream ID. Never raises: an event bus hiccup must not fail a request."""
    fields = {"payload": orjson.dumps(event)}
    if event["event"] in TRANSIENT_EVENTS:
        fields["transient"] = b"1"
    try:
        entry_id = await redis.xadd(STREAM, fields, maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
    except RedisError:
        log.exception("could not publish %s", event.get("event"))
        return None
    return entry_id if isinstance(entry_id, str) else entry_id.decode()
