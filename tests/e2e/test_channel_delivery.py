"""Channel delivery across a control-plane crash: a local receiver verifies the signature of every delivery
and dedupes on ``X-Wrenn-Delivery``. With deliveries queued (the target failing) the control plane is
SIGKILLed, more events happen while it is down, and after a restart every event is delivered — duplicates,
if any, carry the same delivery ID, so the receiver's idempotency check drops them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.core import ids
from app.core.config import Settings
from app.events import service as events
from tests.api.helpers import Client, Platform
from tests.conftest import Services
from tests.e2e.cp import Replica, shared_env
from tests.fakes.github import ServerThread
from tests.fakes.webhook import WebhookReceiver

HOST_SPEC = {"arch": "amd64", "cpu_cores": 2, "memory_mb": 2048, "disk_gb": 20, "address": "127.0.0.1:1"}


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, str]]:
    rx = WebhookReceiver()
    with ServerThread(rx.app()) as server:
        yield rx, f"http://127.0.0.1:{server.port}"


async def _host_up(admin: Client, anon: Client, team_id: str) -> None:
    r = await admin.post("/v1/hosts", json={"type": "byoc", "team_id": team_id})
    assert r.status_code == 201, r.text
    r = await anon.post("/v1/hosts/register", json={"token": r.json()["registration_token"], **HOST_SPEC})
    assert r.status_code == 201, r.text


async def test_queued_deliveries_survive_a_killed_control_plane(
    services: Services, test_ca: tuple[str, str], tmp_path: Path, receiver: tuple[WebhookReceiver, str],
) -> None:
    rx, base = receiver
    redis_url = services.redis_url_for(62)
    flush = Redis.from_url(redis_url, decode_responses=True)
    await flush.flushdb()
    env = shared_env(services.fresh_database(), redis_url, test_ca, WRENN_CHANNELS_ALLOW_PRIVATE="true",
                     WRENN_CHANNEL_RETRY_DELAYS="[0.5, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]", WRENN_CHANNEL_TIMEOUT="3")
    cp = Replica(tmp_path / "cp", env).start()
    p = Platform(cp.base, Settings(WRENN_DIR=cp.data_dir))
    try:
        boot = cp.bootstrap()
        admin = await p.login(boot["admin_email"], boot["admin_password"])
        team = boot["team_id"]
        r = await admin.post("/v1/channels", json={"name": "hook", "provider": "webhook",
                                                    "config": {"url": f"{base}/hook"}, "events": ["host.up"]})
        assert r.status_code == 201, r.text
        rx.secret = r.json()["secret"]
        assert (await admin.put(f"/v1/admin/teams/{team}/byoc", json={"byoc": True})).status_code == 204

        # The target is down (5xx): deliveries queue up and are retried.
        rx.fail_next = 10_000
        anon = p.client()
        for _ in range(4):
            await _host_up(admin, anon, team)
        deadline = time.monotonic() + 20
        while rx.snapshot()[2] < 8:  # several attempts made, none accepted
            assert time.monotonic() < deadline, "no delivery attempts"
            await asyncio.sleep(0.1)
        assert rx.snapshot()[0] == []
        cp.kill()

        # Events keep happening while the control plane is down (published by the one function, as any
        # other replica would).
        while_down = [await events.publish(flush, events.make_event("host.up", ids.decode(ids.TEAM, team),
                                                                    f"host-down-{i}", "host")) for i in range(3)]
        rx.fail_next = 0  # the target recovers
        cp.start()
        expected = set(await _host_up_ids(flush)) | {i for i in while_down if i}
        assert len(expected) == 7
        deadline = time.monotonic() + 60
        while {d.event_id for d in rx.snapshot()[0]} != expected:
            assert time.monotonic() < deadline, (sorted(d.event_id for d in rx.snapshot()[0]), sorted(expected))
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)  # nothing more arrives
        accepted, duplicates, _ = rx.snapshot()
        assert len(accepted) == 7 and {d.event_id for d in accepted} == expected
        assert all(d.event_id in expected for d in duplicates)  # a redelivery is recognisable, never new
        assert rx.bad_signatures == 0
        assert all(d.event["event"] == "host.up" and d.event["team_id"] == team for d in accepted)
        assert await flush.xlen("wrenn:channel-deliveries") == 0
    finally:
        await p.close()
        await flush.aclose()
        cp.stop()


async def _host_up_ids(redis: Redis) -> list[str]:
    import orjson

    entries = await redis.xrange(events.STREAM)
    return [entry_id for entry_id, fields in entries if orjson.loads(fields["payload"])["event"] == "host.up"]
