"""Per-capsule metrics: live from the agent while running, from Postgres once flushed (§16.3)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from app.auth.identity import Identity
from app.capsules import service
from app.capsules.errors import agent_failure
from app.capsules.models import MetricPoint
from app.core import clock
from app.core.errors import InvalidRequest, NotFound
from app.core.state import AppState
from app.hostagent.client import AgentError
from app.hostagent.proto import hostagent_pb2 as pb

RANGES = {"5m": 300, "10m": 600, "1h": 3600, "2h": 7200, "6h": 21600, "12h": 43200, "24h": 86400}
TIER_OF = {"5m": "10m", "10m": "10m", "1h": "2h", "2h": "2h", "6h": "24h", "12h": "24h", "24h": "24h"}


def point_json(ts: int, cpu: float, mem: int, disk: int) -> dict[str, Any]:
    return {"timestamp_unix": int(ts), "cpu_pct": float(cpu), "mem_bytes": int(mem), "disk_bytes": int(disk)}


async def store_points(state: AppState, capsule_id: uuid.UUID, flushed: Any, tiers: tuple[str, ...]) -> None:
    rows = []
    for tier, points in (("10m", flushed.points_10m), ("2h", flushed.points_2h), ("24h", flushed.points_24h)):
        if tier not in tiers:
            continue
        rows += [{"sandbox_id": capsule_id, "tier": tier, "ts": p.timestamp_unix, "cpu_pct": p.cpu_pct,
                  "mem_bytes": p.mem_bytes, "disk_bytes": p.disk_bytes} for p in points]
    if not rows:
        return
    async with state.db() as db, db.begin():
        await db.execute(insert(MetricPoint).values(rows).on_conflict_do_nothing())


async def get_metrics(state: AppState, who: Identity | None, ref: str, range_: str) -> dict[str, Any]:
    if range_ not in RANGES:
        raise InvalidRequest(f"range: must be one of {', '.join(RANGES)}")
    t = await service.target(state, who, ref, need_running=False)
    if t.capsule.status == "running":
        try:
            reply = await t.client.get_sandbox_metrics(pb.GetSandboxMetricsRequest(sandbox_id=t.ref, range=range_))
        except AgentError as exc:
            raise agent_failure(exc) from exc
        points = [point_json(p.timestamp_unix, p.cpu_pct, p.mem_bytes, p.disk_bytes) for p in reply.points]
    elif t.capsule.status == "paused":
        since = clock.unix() - RANGES[range_]
        async with state.db() as db:
            rows = await db.scalars(select(MetricPoint).where(
                MetricPoint.sandbox_id == t.capsule.id, MetricPoint.tier == TIER_OF[range_], MetricPoint.ts >= since,
            ).order_by(MetricPoint.ts))
            points = [point_json(p.ts, p.cpu_pct, p.mem_bytes, p.disk_bytes) for p in rows]
    else:
        raise NotFound(f"no metrics for a capsule in status {t.capsule.status}")
    return {"sandbox_id": t.ref, "range": range_, "points": points}
