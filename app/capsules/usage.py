"""Team-level metrics and usage (control-plane.md §16.1, §16.2, §16.4).

* ``sample``: the 10-second sampler (leader-elected) that writes one ``sandbox_metrics_snapshots`` row per
  team with any capsule row, and prunes rows older than 60 days.
* ``rollup``: the hourly usage rollup into ``daily_usage``.
* ``stats`` / ``daily``: the ``GET /v1/capsules/stats`` and ``GET /v1/capsules/usage`` answers.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Select, case, delete, func, literal, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.identity import Identity
from app.capsules.models import Capsule, DailyUsage, MetricsSnapshot
from app.core import clock
from app.core.errors import InvalidRequest
from app.core.state import AppState

SAMPLE_INTERVAL_SEC = 10.0
ROLLUP_INTERVAL_SEC = 3600.0
RETENTION = timedelta(days=60)
PEAK_WINDOW = timedelta(days=30)
# The rollup recomputes the last few complete days (not only yesterday) so a control plane that was down
# across midnight still fills the gap on its next tick; re-upserting a complete day is idempotent.
ROLLUP_DAYS = 3
MAX_USAGE_SPAN_DAYS = 92
DEFAULT_USAGE_DAYS = 29
MINUTES_PER_SAMPLE = SAMPLE_INTERVAL_SEC / 60.0

# range → (bucket width in seconds, lookback)
RANGES: dict[str, tuple[int, timedelta]] = {
    "5m": (3, timedelta(minutes=5)),
    "1h": (30, timedelta(hours=1)),
    "6h": (180, timedelta(hours=6)),
    "24h": (720, timedelta(hours=24)),
    "30d": (21600, timedelta(days=30)),
}
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

_ACTIVE = Capsule.status.in_(("running", "starting"))
_PAUSED = Capsule.status == "paused"


def _reserved_columns() -> tuple[Any, Any, Any]:
    """running_count, vcpus_reserved, memory_mb_reserved over a set of capsule rows (§16.1)."""
    running = func.count().filter(_ACTIVE)
    vcpus = func.coalesce(func.sum(case((_ACTIVE, Capsule.vcpus), else_=0)), 0)
    # ceil(memory / 2) for paused capsules, in integer arithmetic
    memory = func.coalesce(
        func.sum(case((_ACTIVE, Capsule.memory_mb), (_PAUSED, (Capsule.memory_mb + 1) / 2), else_=0)), 0
    )
    return running, vcpus, memory


# --- background loops -----------------------------------------------------------------------


async def sample(state: AppState) -> int:
    """One sampler tick: prune old snapshots, insert one per team that has any capsule row.
    Returns the number of rows inserted."""
    now = clock.now()
    running, vcpus, memory = _reserved_columns()
    rows = (
        select(Capsule.team_id, literal(now), running, vcpus, memory)
        .group_by(Capsule.team_id)
    )
    async with state.db() as db, db.begin():
        await db.execute(delete(MetricsSnapshot).where(MetricsSnapshot.sampled_at < now - RETENTION))
        result = await db.execute(
            insert(MetricsSnapshot).from_select(
                ["team_id", "sampled_at", "running_count", "vcpus_reserved", "memory_mb_reserved"], rows
            )
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _day_column() -> Any:
    return func.date_trunc("day", func.timezone("UTC", MetricsSnapshot.sampled_at))


async def rollup(state: AppState) -> None:
    """Upsert the complete UTC days of the last ``ROLLUP_DAYS`` days into ``daily_usage`` (§16.4)."""
    today = _midnight(clock.now().date())
    day = _day_column()
    rows = (
        select(
            MetricsSnapshot.team_id,
            day,
            func.sum(MetricsSnapshot.vcpus_reserved) * MINUTES_PER_SAMPLE,
            func.sum(MetricsSnapshot.memory_mb_reserved) * MINUTES_PER_SAMPLE,
        )
        .where(MetricsSnapshot.sampled_at >= today - timedelta(days=ROLLUP_DAYS), MetricsSnapshot.sampled_at < today)
        .group_by(MetricsSnapshot.team_id, day)
    )
    statement = insert(DailyUsage).from_select(["team_id", "day", "cpu_minutes", "ram_mb_minutes"], rows)
    statement = statement.on_conflict_do_update(
        index_elements=["team_id", "day"],
        set_={"cpu_minutes": statement.excluded.cpu_minutes, "ram_mb_minutes": statement.excluded.ram_mb_minutes},
    )
    async with state.db() as db, db.begin():
        await db.execute(statement)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# --- GET /v1/capsules/stats -----------------------------------------------------------------


async def current(db: AsyncSession, team_id: uuid.UUID) -> tuple[int, int, int]:
    running, vcpus, memory = _reserved_columns()
    row = (await db.execute(select(running, vcpus, memory).where(Capsule.team_id == team_id))).one()
    return int(row[0]), int(row[1]), int(row[2])


def _team_snapshots(team_id: uuid.UUID, since: datetime, *columns: Any) -> Select[Any]:
    return select(*columns).where(MetricsSnapshot.team_id == team_id, MetricsSnapshot.sampled_at >= since)


async def stats(state: AppState, who: Identity, range_: str) -> dict[str, Any]:
    if range_ not in RANGES:
        raise InvalidRequest(f"range: must be one of {', '.join(RANGES)}")
    assert who.team_id is not None
    team_id = who.team_id
    width, lookback = RANGES[range_]
    now = clock.now()
    bucket = (func.floor(func.extract("epoch", MetricsSnapshot.sampled_at) / width) * width).label("bucket")
    async with state.db() as db:
        running, vcpus, memory = await current(db, team_id)
        sampled_at = await db.scalar(
            select(func.max(MetricsSnapshot.sampled_at)).where(MetricsSnapshot.team_id == team_id)
        )
        peaks = (await db.execute(_team_snapshots(
            team_id, now - PEAK_WINDOW,
            func.coalesce(func.max(MetricsSnapshot.running_count), 0),
            func.coalesce(func.max(MetricsSnapshot.vcpus_reserved), 0),
            func.coalesce(func.max(MetricsSnapshot.memory_mb_reserved), 0),
        ))).one()
        series = (await db.execute(
            _team_snapshots(
                team_id, now - lookback, bucket,
                func.max(MetricsSnapshot.running_count),
                func.max(MetricsSnapshot.vcpus_reserved),
                func.max(MetricsSnapshot.memory_mb_reserved),
            ).group_by(bucket).order_by(bucket)
        )).all()
    return {
        "range": range_,
        "current": {
            "running_count": running,
            "vcpus_reserved": vcpus,
            "memory_mb_reserved": memory,
            "sampled_at": clock.iso(sampled_at),
        },
        "peaks": {"running_count": int(peaks[0]), "vcpus": int(peaks[1]), "memory_mb": int(peaks[2])},
        "series": {
            "labels": [clock.iso(datetime.fromtimestamp(float(row[0]), UTC)) for row in series],
            "running": [int(row[1]) for row in series],
            "vcpus": [int(row[2]) for row in series],
            "memory_mb": [int(row[3]) for row in series],
        },
    }


# --- GET /v1/capsules/usage -----------------------------------------------------------------


def _parse_date(value: str | None, field: str, default: date) -> date:
    if value is None or value == "":
        return default
    if not DATE_RE.match(value):
        raise InvalidRequest(f"{field}: must be a date YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequest(f"{field}: not a valid date") from exc


def _minutes(value: Any) -> float:
    return round(float(value or 0), 4)


async def daily(state: AppState, who: Identity, from_: str | None, to: str | None) -> dict[str, Any]:
    assert who.team_id is not None
    team_id = who.team_id
    today = clock.now().date()
    end = _parse_date(to, "to", today)
    # Default: the 30 days ending at ``to`` (today when ``to`` is absent, as the spec says).
    start = _parse_date(from_, "from", end - timedelta(days=DEFAULT_USAGE_DAYS))
    if start > end:
        raise InvalidRequest("from: must not be after to")
    if (end - start).days > MAX_USAGE_SPAN_DAYS:
        raise InvalidRequest(f"the range may span at most {MAX_USAGE_SPAN_DAYS} days")
    points: list[dict[str, Any]] = []
    async with state.db() as db:
        past_end = min(end, today - timedelta(days=1))
        if start <= past_end:
            rows = await db.execute(
                select(DailyUsage.day, DailyUsage.cpu_minutes, DailyUsage.ram_mb_minutes)
                .where(DailyUsage.team_id == team_id,
                       DailyUsage.day >= datetime(start.year, start.month, start.day),
                       DailyUsage.day <= datetime(past_end.year, past_end.month, past_end.day))
                .order_by(DailyUsage.day)
            )
            points += [{"date": day.date().isoformat(), "cpu_minutes": _minutes(cpu),
                        "ram_mb_minutes": _minutes(ram)} for day, cpu, ram in rows.all()]
        if start <= today <= end:
            row = (await db.execute(
                _team_snapshots(
                    team_id, _midnight(today), func.count(),
                    func.coalesce(func.sum(MetricsSnapshot.vcpus_reserved), 0),
                    func.coalesce(func.sum(MetricsSnapshot.memory_mb_reserved), 0),
                )
            )).one()
            if row[0]:
                points.append({"date": today.isoformat(),
                               "cpu_minutes": _minutes(float(row[1]) * MINUTES_PER_SAMPLE),
                               "ram_mb_minutes": _minutes(float(row[2]) * MINUTES_PER_SAMPLE)})
    return {"from": start.isoformat(), "to": end.isoformat(), "points": points}
