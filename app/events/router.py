"""``GET /v1/events/stream`` (team; API key or session) and ``GET /v1/admin/events/stream`` (platform admin).

Frames: ``connected`` first, then one event per stream entry with ``id: <stream ID>``, ``: keepalive``
comments in between. ``Last-Event-ID`` (header, or ``last_event_id`` query for clients that cannot set
headers) replays what the client missed, from any replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.auth.deps import PlatformAdmin, State, TeamCaller
from app.core import ids
from app.core.errors import InvalidRequest
from app.core.state import AppState
from app.events.hub import Frame, Subscriber, hub_of, stream_id_key, valid_stream_id

router = APIRouter(tags=["events"])

SEP = "\n"
CONNECTED = ServerSentEvent(data='{"message":"connected"}', event="connected", sep=SEP)
OVERFLOW = ServerSentEvent(comment="closed: this client fell too far behind; reconnect with Last-Event-ID", sep=SEP)
SHUTDOWN = ServerSentEvent(comment="closed: server shutting down; reconnect with Last-Event-ID", sep=SEP)


@router.get("/v1/events/stream")
async def stream_events(who: TeamCaller, request: Request, state: State) -> EventSourceResponse:
    assert who.team_id is not None
    return _response(state, ids.encode(ids.TEAM, who.team_id), _last_event_id(request))


@router.get("/v1/admin/events/stream", tags=["admin"])
async def admin_stream_events(who: PlatformAdmin, request: Request, state: State) -> EventSourceResponse:
    return _response(state, None, _last_event_id(request))


def _last_event_id(request: Request) -> str | None:
    value = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or ""
    value = value.strip()
    if not value:
        return None
    if not valid_stream_id(value):
        raise InvalidRequest("Last-Event-ID: not an event ID from this stream")
    return value


def _response(state: AppState, team_id: str | None, last_id: str | None) -> EventSourceResponse:
    s = state.settings
    return EventSourceResponse(
        _frames(state, team_id, last_id),
        headers={"Cache-Control": "no-cache"},
        ping=s.sse_keepalive_sec,
        ping_message_factory=lambda: ServerSentEvent(comment="keepalive", sep=SEP),
        sep=SEP,
        send_timeout=s.sse_send_timeout_sec,
    )


def _sse(frame: Frame) -> ServerSentEvent:
    return ServerSentEvent(data=frame.data, event=frame.event, id=frame.id, sep=SEP)


async def _frames(state: AppState, team_id: str | None, last_id: str | None) -> AsyncIterator[ServerSentEvent]:
    hub = hub_of(state)
    # Subscribe before replaying, so nothing published during the replay falls between the two.
    sub = hub.subscribe(team_id)
    try:
        yield CONNECTED
        sent = stream_id_key(last_id) if last_id else None
        if last_id:
            async for frame in hub.replay(team_id, last_id):
                if sub.closed:
                    break
                yield _sse(frame)
                sent = stream_id_key(frame.id)
        async for frame in _live(sub):
            if sent is not None and stream_id_key(frame.id) <= sent:
                continue  # already sent by the replay
            yield _sse(frame)
            sent = stream_id_key(frame.id)
        yield SHUTDOWN if sub.closed == "shutdown" else OVERFLOW
    finally:
        hub.unsubscribe(sub)


async def _live(sub: Subscriber) -> AsyncIterator[Frame]:
    """Frames as the hub hands them over; ends when the subscriber is cut off."""
    while True:
        while sub.frames and not sub.closed:
            yield sub.frames.popleft()
        if sub.closed:
            return
        sub.wake.clear()
        if not sub.frames:
            await sub.wake.wait()
