"""SSE event streams over a real HTTP server: framing, team isolation, admin stream, Last-Event-ID resume,
hydration, slow-subscriber cut-off and cleanup. Events are caused through the API where one exists and
otherwise published with the one publishing function (``app.events.service.publish``)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from redis.asyncio import Redis

from app.core import ids
from app.core.config import Settings
from app.core.redis import make_redis
from app.events import service as events
from tests.api.helpers import Client, Platform
from tests.api.sse import LiveApp, SSEStream

HOST_SPEC = {"arch": "amd64", "cpu_cores": 4, "memory_mb": 8192, "disk_gb": 50, "address": "127.0.0.1:1"}


@pytest.fixture
def live(settings: Settings, flushed_redis: None) -> Iterator[LiveApp]:
    settings.sse_keepalive_sec = 0.5
    with LiveApp(settings) as server:
        yield server


@pytest.fixture
async def lp(live: LiveApp, settings: Settings) -> AsyncIterator[Platform]:
    p = Platform(live.base, settings)
    yield p
    await p.close()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = make_redis(settings.redis_url)
    yield client
    await client.aclose()


async def _api_key(c: Client) -> str:
    r = await c.post("/v1/api-keys", json={"name": "sse"})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def _stream(live: LiveApp, c: Client | None = None, key: str | None = None, *, admin: bool = False,
            last_id: str | None = None) -> SSEStream:
    headers = {"X-API-Key": key} if key else {}
    if last_id:
        headers["Last-Event-ID"] = last_id
    path = "/v1/admin/events/stream" if admin else "/v1/events/stream"
    return SSEStream(live.base + path, headers=headers, cookies=c.http.cookies if c and not key else None)


async def _publish(redis: Redis, name: str, team_ref: str, resource: str = "cl-x", **kw: object) -> str:
    team = ids.decode(ids.TEAM, team_ref)
    rtype = "host" if name.startswith("host.") else "snapshot" if name.startswith("template.") else "sandbox"
    outcome = None if name.startswith("host.") or name == "capsule.state.changed" else "success"
    entry = await events.publish(redis, events.make_event(name, team, resource, rtype, outcome=outcome, **kw))  # type: ignore[arg-type]
    assert entry is not None
    return entry


async def test_connected_first_then_keepalive_with_sse_headers(live: LiveApp, lp: Platform) -> None:
    owner = await lp.user()
    async with _stream(live, key=await _api_key(owner)) as s:
        assert s.status == 200
        assert s.response_headers is not None
        assert s.response_headers["content-type"].startswith("text/event-stream")
        assert s.response_headers["cache-control"] == "no-cache"
        assert s.response_headers["x-accel-buffering"] == "no"
        first = await s.next(comments=True)
        assert (first.event, first.json(), first.id) == ("connected", {"message": "connected"}, None)
        keepalive = await s.next(comments=True)
        assert keepalive.comment == "keepalive"
    assert s.raw.startswith(b'event: connected\ndata: {"message":"connected"}\n\n: keepalive\n')


async def test_auth_is_required_and_admin_stream_is_admin_only(live: LiveApp, lp: Platform) -> None:
    await lp.user()  # the first user is the platform admin
    member = await lp.user()
    async with _stream(live) as s:
        assert s.status == 401 and b'"unauthorized"' in s.body
    async with _stream(live, key="wrn_" + "0" * 32) as s:
        assert s.status == 401
    async with _stream(live, member, admin=True) as s:
        assert s.status == 403
    async with _stream(live, member, last_id="not-an-id") as s:
        assert s.status == 400 and b"Last-Event-ID" in s.body


async def test_team_isolation_admin_sees_all_and_unknown_names_never_reach_clients(
    live: LiveApp, lp: Platform, redis: Redis
) -> None:
    admin = await lp.user()
    alice, bob = await lp.user(), await lp.user()
    async with _stream(live, key=await _api_key(alice)) as sa, _stream(live, bob) as sb, \
            _stream(live, admin, admin=True) as sadm:
        for s in (sa, sb, sadm):
            assert (await s.next()).event == "connected"
        # Both teams act, interleaved. Names outside the spec enum travel the stream too: template builds
        # reach the admin stream only; anything else reaches nobody.
        a1 = await _publish(redis, "capsule.create", alice.team_id, "cl-a1")
        b1 = await _publish(redis, "capsule.pause", bob.team_id, "cl-b1")
        await _publish(redis, "volume.create", alice.team_id, "vol-1")
        build = await _publish(redis, "build.succeeded", alice.team_id, "bld-1")
        a2 = await _publish(redis, "capsule.state.changed", alice.team_id, "cl-a1",
                            metadata={"from": "starting", "to": "running"})
        b2 = await _publish(redis, "template.snapshot.create", bob.team_id, "tpl")
        # A real action: a BYOC host of Bob's team registers → host.up on Bob's stream only.
        r = await admin.put(f"/v1/admin/teams/{bob.team_id}/byoc", json={"byoc": True})
        assert r.status_code == 204, r.text
        r = await bob.post("/v1/hosts", json={"type": "byoc", "team_id": bob.team_id})
        assert r.status_code == 201, r.text
        r = await lp.client().post("/v1/hosts/register", json={"token": r.json()["registration_token"], **HOST_SPEC})
        assert r.status_code == 201, r.text
        host_ref = r.json()["host"]["id"]

        got_a = await sa.events(2)
        assert [(f.id, f.event) for f in got_a] == [(a1, "capsule.create"), (a2, "capsule.state.changed")]
        assert all(f.json()["team_id"] == alice.team_id for f in got_a)
        got_b = await sb.events(3)
        assert [(f.id, f.event) for f in got_b[:2]] == [(b1, "capsule.pause"), (b2, "template.snapshot.create")]
        assert got_b[2].event == "host.up" and got_b[2].json()["resource"] == {"id": host_ref, "type": "host"}
        got_admin = await sadm.events(6)
        assert [f.id for f in got_admin[:5]] == [a1, b1, build, a2, b2] and got_admin[5].event == "host.up"
        assert await sa.quiet(0.7) == []  # nothing of Bob's, no build or volume event
        for f in [*got_a, *got_b]:
            assert f.event in events.SSE_EVENTS and f.json()["event"] == f.event


async def test_capsule_events_carry_the_hydrated_capsule(
    live: LiveApp, lp: Platform, redis: Redis, settings: Settings
) -> None:
    owner = await lp.user()
    capsule_id = uuid.uuid4()
    ref = ids.encode(ids.CAPSULE, capsule_id)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("INSERT INTO sandboxes (id, team_id, status, template, metadata) "
                           "VALUES ($1, $2, 'starting', 'minimal', '{\"k\": \"v\"}')",
                           capsule_id, ids.decode(ids.TEAM, owner.team_id))
    finally:
        await conn.close()
    async with _stream(live, key=await _api_key(owner)) as s:
        await s.next()
        # A system-actor success follow-up shows the state it implies, even if the DB writer lags.
        await _publish(redis, "capsule.create", owner.team_id, ref)
        await _publish(redis, "capsule.destroy", owner.team_id, ids.encode(ids.CAPSULE, uuid.uuid4()))
        created, gone = await s.events(2)
    sandbox = created.json()["sandbox"]
    assert sandbox["id"] == ref and sandbox["status"] == "running" and sandbox["metadata"] == {"k": "v"}
    assert sandbox["created_at"].endswith("Z")
    assert gone.json()["sandbox"] is None  # no such row


async def test_last_event_id_replays_exactly_the_missed_events_in_order(
    live: LiveApp, lp: Platform, redis: Redis
) -> None:
    owner, other = await lp.user(), await lp.user()
    key = await _api_key(owner)
    async with _stream(live, key=key) as s:
        await s.next()
        seen = await _publish(redis, "capsule.create", owner.team_id, "cl-1")
        assert (await s.next()).id == seen
    missed = []
    for i in range(6):
        missed.append(await _publish(redis, "capsule.pause", owner.team_id, f"cl-{i}"))
        await _publish(redis, "capsule.pause", other.team_id, f"cl-other-{i}")
    async with _stream(live, key=key, last_id=seen) as s:
        assert (await s.next()).event == "connected"
        replayed = await s.events(6)
        assert [f.id for f in replayed] == missed
        after = await _publish(redis, "capsule.resume", owner.team_id, "cl-9")
        assert (await s.next()).id == after  # then live, without repeating anything
        assert await s.quiet(0.5) == []
    # The query parameter works too, for clients that cannot set headers.
    async with SSEStream(f"{live.base}/v1/events/stream?last_event_id={missed[4]}", headers={"X-API-Key": key}) as s:
        await s.next()
        assert [f.id for f in await s.events(2)] == [missed[5], after]


async def test_slow_subscriber_is_cut_off_without_delaying_others(
    settings: Settings, flushed_redis: None, redis: Redis
) -> None:
    settings.sse_buffer_events = 32
    with LiveApp(settings) as live:
        p = Platform(live.base, settings)
        try:
            owner = await p.user()
            key = await _api_key(owner)
            slow = _raw_stream(live.server.port, key)
            async with _stream(live, key=key) as fast:
                await fast.next()
                await _until(lambda: live.hub_subscribers() == 2)
                pad = "x" * 16_000
                started = time.monotonic()
                ids_sent, got = [], []
                for burst in range(30):  # bursts of 20 events of 16 kB: a few MB the slow client never reads
                    for i in range(20):
                        ids_sent.append(await _publish(redis, "capsule.pause", owner.team_id, f"cl-{burst}-{i}",
                                                       metadata={"pad": pad}))
                    got += await fast.events(20, wait=30)
                assert [f.id for f in got] == ids_sent
                assert time.monotonic() - started < 30
                # The slow client (never reading) was cut off: the hub holds nothing for it any more.
                subs = live.app.state.wrenn.extras["event_hub"].subscribers
                assert any(sub.closed == "overflow" and not sub.frames for sub in subs)
            tail = await asyncio.to_thread(_drain, slow)
            assert b"closed: this client fell too far behind; reconnect with Last-Event-ID" in tail
            await _until(lambda: live.hub_subscribers() == 0)  # every disconnect frees its subscriber
        finally:
            await p.close()


def _raw_stream(port: int, key: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /v1/events/stream HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode())
    return sock


def _drain(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    data = bytearray()
    with sock:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            if b"closed: this client fell" in data[-4096:]:
                break
    return bytes(data[-8192:])


async def _until(predicate: object, wait: float = 20) -> None:
    deadline = time.monotonic() + wait
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)
