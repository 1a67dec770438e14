"""least_loaded host selection (control-plane.md §7), serialised by an advisory lock so two concurrent
creates cannot both take the last free slot."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import case, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.capsules.models import Capsule
from app.core import ids
from app.core.errors import ApiError
from app.core.leader import lock_key
from app.hosts.models import Host
from app.snapshots.models import Template

SCHEDULER_LOCK = lock_key("capsule-scheduler")


class NoHosts(ApiError):
    status = 503
    code = "no_hosts_available"


@dataclass
class Load:
    vcpus: float
    memory_mb: float
    disk_mb: float


def _capacity(host: Host) -> tuple[float, float, float]:
    # The reference keeps headroom for the host itself; on a small machine that would leave no room,
    # so the reserve shrinks to a quarter of the machine when the fixed reserve would eat it all.
    ram = host.memory_mb - 8192 if host.memory_mb > 16384 else host.memory_mb * 0.75
    cpu = host.cpu_cores * 1.5 - 4 if host.cpu_cores > 8 else host.cpu_cores * 1.5
    disk = host.disk_gb * 1024 - 30720 if host.disk_gb > 60 else host.disk_gb * 1024 * 0.75
    return ram, cpu, disk


async def _loads(db: AsyncSession, host_ids: list[object]) -> dict[object, Load]:
    full = Capsule.status.in_(("running", "starting", "pending"))
    paused = Capsule.status == "paused"
    rows = await db.execute(
        select(
            Capsule.host_id,
            func.sum(case((full, Capsule.vcpus), else_=0)),
            func.sum(case((full, Capsule.memory_mb), (paused, Capsule.memory_mb * 0.5), else_=0)),
            func.sum(case((full, Capsule.disk_size_mb), (paused, Capsule.disk_size_mb * 2.0 / 3.0), else_=0)),
        )
        .where(Capsule.host_id.in_(host_ids))
        .group_by(Capsule.host_id)
    )
    return {h: Load(float(c or 0), float(m or 0), float(d or 0)) for h, c, m, d in rows.all()}


def template_host(template: Template) -> uuid.UUID | None:
    """The host that holds a snapshot template's files (``metadata.host_id``), or None when every host
    has it (the built-in ``minimal``)."""
    value = (template.metadata_ or {}).get("host_id")
    return ids.try_decode(ids.HOST, value) if isinstance(value, str) else None


def _fraction(free: float, total: float) -> float:
    return free / total if total > 0 else 0.0


async def pick_host(
    db: AsyncSession, team_id: object, byoc: bool, memory_mb: int, only_host: uuid.UUID | None = None
) -> Host:
    """Choose a host inside the caller's transaction; the lock is held until it commits.
    ``only_host``: the template's files live on that host alone (a snapshot), so it is the only candidate."""
    await db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEDULER_LOCK})
    query = select(Host).where(Host.status == "online", Host.address != "").order_by(Host.created_at)
    pool = (Host.type == "byoc", Host.team_id == team_id) if byoc else (Host.type == "regular",)
    query = query.where(*pool)
    if only_host is not None:
        query = query.where(Host.id == only_host)
    hosts = list(await db.scalars(query))
    if not hosts and only_host is not None:
        raise NoHosts("the host that holds this template is not available")
    if not hosts:
        kind = "BYOC" if byoc else "platform"
        raise NoHosts(f"no online {kind} hosts available" + (" for team" if byoc else ""))
    loads = await _loads(db, [h.id for h in hosts])
    best: tuple[float, Host] | None = None
    for host in hosts:
        ram, cpu, disk = _capacity(host)
        used = loads.get(host.id, Load(0, 0, 0))
        ram_free = ram - used.memory_mb
        if ram_free < memory_mb:
            continue
        score = min(_fraction(ram_free, ram), _fraction(cpu - used.vcpus, cpu), _fraction(disk - used.disk_mb, disk))
        if best is None or score > best[0]:
            best = (score, host)
    if best is None:
        raise NoHosts(f"no host has sufficient resources: need {memory_mb} MB memory")
    return best[1]
