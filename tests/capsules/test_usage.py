"""Team stats, daily usage and per-capsule metrics against a live control plane and a real agent. The
sampler and the rollup are called directly (the same functions the leader loops run)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from app.capsules import usage
from app.capsules.models import DailyUsage, MetricsSnapshot
from app.core import ids
from app.core.db import make_engine, make_sessionmaker
from app.core.mail import Mailer
from app.core.redis import make_redis
from app.core.state import AppState
from openapi.conformance import ConformanceRecorder
from tests.api.helpers import Client, Platform
from tests.capsules.conftest import Stack
from tests.capsules.helpers import new_capsule, wait_status


@pytest.fixture
async def cp(stack: Stack) -> AsyncIterator[AppState]:
    """The control plane's state, in the test's event loop, for calling the loop jobs directly."""
    engine = make_engine(stack.settings.database_url)
    state = AppState(settings=stack.settings, engine=engine, db=make_sessionmaker(engine),
                     redis=make_redis(stack.settings.redis_url), mailer=Mailer(stack.settings))
    yield state
    await state.redis.aclose()
    await engine.dispose()


def _aware(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    assert value.tzinfo is not None and text.endswith("Z"), text
    return value


async def _stats(client: Client, range_: str | None = None) -> dict[str, Any]:
    r = await client.get("/v1/capsules/stats", params={"range": range_} if range_ else None)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_stats_from_sampled_data(live: Platform, cp: AppState, conformance: ConformanceRecorder) -> None:
    user = conformance.wrap(await live.user())  # a fresh team: its numbers are ours alone
    before = await _stats(user)
    assert before["current"] == {"running_count": 0, "vcpus_reserved": 0, "memory_mb_reserved": 0,
                                 "sampled_at": None}
    assert before["series"] == {"labels": [], "running": [], "vcpus": [], "memory_mb": []}

    first = await new_capsule(user, vcpus=2, memory_mb=1024)
    second = await new_capsule(user)
    assert await usage.sample(cp) >= 1
    body = await _stats(user)
    assert body["range"] == "1h"
    assert body["current"]["running_count"] == 2
    assert body["current"]["vcpus_reserved"] == 3 and body["current"]["memory_mb_reserved"] == 1536
    assert _aware(body["current"]["sampled_at"]) > datetime.now(UTC) - timedelta(minutes=1)
    assert body["peaks"] == {"running_count": 2, "vcpus": 3, "memory_mb": 1536}
    series = body["series"]
    assert len(series["labels"]) >= 1
    assert len(series["labels"]) == len(series["running"]) == len(series["vcpus"]) == len(series["memory_mb"])
    assert all(_aware(label).second % 30 == 0 for label in series["labels"])  # 30-s buckets
    assert series["running"][-1] == 2 and series["vcpus"][-1] == 3 and series["memory_mb"][-1] == 1536

    # pausing: no longer running, half its memory still reserved (ceil)
    assert (await user.post(f"/v1/capsules/{first}/pause")).status_code == 202
    await wait_status(user, first, "paused")
    await usage.sample(cp)
    body = await _stats(user, "5m")
    assert body["range"] == "5m"
    assert body["current"] == {**body["current"], "running_count": 1, "vcpus_reserved": 1,
                               "memory_mb_reserved": 512 + 512}
    assert body["peaks"] == {"running_count": 2, "vcpus": 3, "memory_mb": 1536}
    assert all(_aware(label).second % 3 == 0 for label in body["series"]["labels"])

    for range_ in ("5m", "1h", "6h", "24h", "30d"):
        got = await _stats(user, range_)
        assert got["range"] == range_ and got["series"]["labels"], range_
    for bad in ("2h", "10m", "1d", "x"):
        r = await user.get("/v1/capsules/stats", params={"range": bad})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", bad

    # the sampler prunes snapshots older than 60 days
    team = ids.decode(ids.TEAM, user.team_id)
    async with cp.db() as db, db.begin():
        db.add(MetricsSnapshot(team_id=team, sampled_at=datetime.now(UTC) - timedelta(days=61), running_count=9,
                               vcpus_reserved=9, memory_mb_reserved=9))
    await usage.sample(cp)
    async with cp.db() as db:
        oldest = await db.scalar(select(func.min(MetricsSnapshot.sampled_at)).where(MetricsSnapshot.team_id == team))
    assert oldest is not None and oldest > datetime.now(UTC) - timedelta(days=60)

    for capsule_id in (first, second):
        await user.delete(f"/v1/capsules/{capsule_id}")


async def test_daily_usage(live: Platform, cp: AppState, conformance: ConformanceRecorder) -> None:
    user = conformance.wrap(await live.user())
    team = ids.decode(ids.TEAM, user.team_id)
    today = datetime.now(UTC).date()
    r = await user.get("/v1/capsules/usage")
    assert r.status_code == 200, r.text
    assert r.json() == {"from": (today - timedelta(days=29)).isoformat(), "to": today.isoformat(), "points": []}

    capsule_id = await new_capsule(user)
    await usage.sample(cp)
    await usage.sample(cp)
    # Yesterday and the day before: six 10-second samples each of 2 vCPU / 1024 MB (as the sampler writes)
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    async with cp.db() as db, db.begin():
        for days in (1, 2):
            for i in range(6):
                at = midnight - timedelta(days=days) + timedelta(hours=1, seconds=10 * i)
                db.add(MetricsSnapshot(team_id=team, sampled_at=at, running_count=1, vcpus_reserved=2,
                                       memory_mb_reserved=1024))
    await usage.rollup(cp)
    await usage.rollup(cp)  # idempotent
    async with cp.db() as db:
        assert await db.scalar(select(func.count()).select_from(DailyUsage).where(DailyUsage.team_id == team)) == 2

    body = (await user.get("/v1/capsules/usage")).json()
    by_date = {p["date"]: p for p in body["points"]}
    assert list(by_date) == [(today - timedelta(days=n)).isoformat() for n in (2, 1, 0)]
    yesterday = by_date[(today - timedelta(days=1)).isoformat()]
    assert yesterday == {"date": yesterday["date"], "cpu_minutes": 2.0, "ram_mb_minutes": 1024.0}
    live_today = by_date[today.isoformat()]
    # today is computed live from today's samples: two samples of 1 vCPU / 512 MB, at least
    assert live_today["cpu_minutes"] >= round(2 * 10 / 60, 4) and live_today["ram_mb_minutes"] >= 2 * 512 * 10 / 60

    day = (today - timedelta(days=1)).isoformat()
    body = (await user.get("/v1/capsules/usage", params={"from": day, "to": day})).json()
    assert body == {"from": day, "to": day, "points": [yesterday]}
    far = (today - timedelta(days=92)).isoformat()
    r = await user.get("/v1/capsules/usage", params={"from": far, "to": today.isoformat()})
    assert r.status_code == 200 and len(r.json()["points"]) == 3
    bad_queries = [
        {"from": (today - timedelta(days=93)).isoformat(), "to": today.isoformat()},  # span over 92 days
        {"from": today.isoformat(), "to": (today - timedelta(days=1)).isoformat()},  # from > to
        {"from": "2026-13-01"}, {"to": "2026-02-30"}, {"from": "20260101"}, {"from": "yesterday"},
        {"to": "2026-1-1"},
    ]
    for params in bad_queries:
        r = await user.get("/v1/capsules/usage", params=params)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", params

    async with cp.db() as db, db.begin():
        await db.execute(delete(MetricsSnapshot).where(MetricsSnapshot.team_id == team))
    await user.delete(f"/v1/capsules/{capsule_id}")


async def test_capsule_metrics_running_and_paused(sdk: Client, conformance: ConformanceRecorder) -> None:
    conformance.wrap(sdk)
    capsule_id = await new_capsule(sdk)
    points: list[dict[str, Any]] = []
    for _ in range(50):
        r = await sdk.get(f"/v1/capsules/{capsule_id}/metrics", params={"range": "5m"})
        assert r.status_code == 200, r.text
        points = r.json()["points"]
        if len(points) >= 2:
            break
        await asyncio.sleep(0.2)
    body = r.json()
    assert body["sandbox_id"] == capsule_id and body["range"] == "5m" and len(points) >= 2
    point = points[-1]
    assert set(point) == {"timestamp_unix", "cpu_pct", "mem_bytes", "disk_bytes"}
    assert isinstance(point["timestamp_unix"], int) and isinstance(point["mem_bytes"], int)
    assert 0 <= point["cpu_pct"] <= 100
    r = await sdk.get(f"/v1/capsules/{capsule_id}/metrics")
    assert r.status_code == 200 and r.json()["range"] == "10m"
    r = await sdk.get(f"/v1/capsules/{capsule_id}/metrics", params={"range": "30d"})
    assert r.status_code == 400

    # paused: the points flushed before the pause come from Postgres
    assert (await sdk.post(f"/v1/capsules/{capsule_id}/pause")).status_code == 202
    await wait_status(sdk, capsule_id, "paused")
    r = await sdk.get(f"/v1/capsules/{capsule_id}/metrics", params={"range": "5m"})
    assert r.status_code == 200, r.text
    flushed = r.json()["points"]
    assert len(flushed) >= len(points)
    assert [p["timestamp_unix"] for p in flushed] == sorted(p["timestamp_unix"] for p in flushed)
    assert {p["timestamp_unix"] for p in points} <= {p["timestamp_unix"] for p in flushed}

    assert (await sdk.delete(f"/v1/capsules/{capsule_id}")).status_code == 202
    await wait_status(sdk, capsule_id, "stopped")
    r = await sdk.get(f"/v1/capsules/{capsule_id}/metrics")
    assert r.status_code == 404
