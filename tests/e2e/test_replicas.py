"""Two control-plane processes on one Postgres + Redis: an event caused through replica A reaches SSE
subscribers on replica B (and only the right team's); a subscriber that reconnects with ``Last-Event-ID``
gets exactly the events it missed, in order, from either replica."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.config import Settings
from tests.api.helpers import Client, Platform
from tests.api.sse import SSEStream
from tests.conftest import Services
from tests.e2e.cp import Replica, shared_env

HOST_SPEC = {"arch": "amd64", "cpu_cores": 2, "memory_mb": 2048, "disk_gb": 20, "address": "127.0.0.1:1"}


@pytest.fixture
def replicas(services: Services, test_ca: tuple[str, str], tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    env = shared_env(services.fresh_database(), services.redis_url_for(63), test_ca, WRENN_SSE_KEEPALIVE="1")
    a, b = Replica(tmp_path / "a", env), Replica(tmp_path / "b", env)
    try:
        a.start()  # first: it bootstraps the platform admin
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


async def _host_up(client: Client, anon: Client, team_id: str) -> str:
    """Create and register a BYOC host of ``team_id`` (publishes host.up for that team)."""
    r = await client.post("/v1/hosts", json={"type": "byoc", "team_id": team_id})
    assert r.status_code == 201, r.text
    r = await anon.post("/v1/hosts/register", json={"token": r.json()["registration_token"], **HOST_SPEC})
    assert r.status_code == 201, r.text
    return str(r.json()["host"]["id"])


async def _key(c: Client) -> str:
    r = await c.post("/v1/api-keys", json={"name": "sse"})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


async def test_events_cross_replicas_stay_in_their_team_and_resume_anywhere(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    boot = a.bootstrap()
    on_a = Platform(a.base, Settings(WRENN_DIR=a.data_dir))
    try:
        admin = await on_a.login(boot["admin_email"], boot["admin_password"])
        team1, key1 = boot["team_id"], boot["api_key"]
        other = await on_a.user()  # a second team, signed up through replica A
        key2 = await _key(other)
        for team in (team1, other.team_id):
            r = await admin.put(f"/v1/admin/teams/{team}/byoc", json={"byoc": True})
            assert r.status_code == 204, r.text
        anon = on_a.client()

        s1 = SSEStream(f"{b.base}/v1/events/stream", headers={"X-API-Key": key1})
        s2 = SSEStream(f"{b.base}/v1/events/stream", headers={"X-API-Key": key2})
        sadm = SSEStream(f"{b.base}/v1/admin/events/stream", cookies=admin.http.cookies)
        async with s1, s2, sadm:
            for s in (s1, s2, sadm):
                assert s.status == 200 and (await s.next()).event == "connected"
            h1 = await _host_up(admin, anon, team1)  # caused through replica A
            h2 = await _host_up(other, anon, other.team_id)
            got1, got2 = await s1.next(), await s2.next()
            assert (got1.event, got1.json()["resource"]["id"], got1.json()["team_id"]) == ("host.up", h1, team1)
            assert (got2.event, got2.json()["resource"]["id"]) == ("host.up", h2)
            assert [f.json()["resource"]["id"] for f in await sadm.events(2)] == [h1, h2]
            assert await s1.quiet(1.5) == [] and await s2.quiet(0.1) == []  # never the other team's
            last_seen = got1.id
            assert last_seen is not None

        # Team 1's subscriber is gone; both teams keep acting through replica A.
        missed = []
        for _ in range(3):
            missed.append(await _host_up(admin, anon, team1))
            await _host_up(other, anon, other.team_id)

        for replica in (b, a):  # resume works on any replica
            async with SSEStream(f"{replica.base}/v1/events/stream",
                                 headers={"X-API-Key": key1, "Last-Event-ID": last_seen}) as s:
                assert (await s.next()).event == "connected"
                frames = await s.events(3)
                assert [f.json()["resource"]["id"] for f in frames] == missed
                assert all(f.json()["team_id"] == team1 for f in frames)
                ids_in_order = [f.id for f in frames]
                assert ids_in_order == sorted(ids_in_order, key=lambda i: tuple(map(int, str(i).split("-"))))
                assert await s.quiet(1.5) == []  # exactly the missed ones: nothing more, nothing repeated
    finally:
        await on_a.close()
