from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, Index, Integer, Numeric, String, Text, func
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base
from app.core.types import Created, JsonObject, NullableTimestamp, UuidPk


class Capsule(Base):
    """A capsule (``sandboxes`` table). Rows are never deleted: destroyed capsules stay ``stopped``."""

    __tablename__ = "sandboxes"
    __table_args__ = (
        Index("ix_sandboxes_host_status", "host_id", "status"),
        Index("ix_sandboxes_status", "status"),
        Index("ix_sandboxes_team_id", "team_id"),
    )

    id: Mapped[UuidPk]
    team_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    host_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    template: Mapped[str] = mapped_column(Text, nullable=False, server_default="minimal")
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    vcpus: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    memory_mb: Mapped[int] = mapped_column(Integer, nullable=False, server_default="512")
    timeout_sec: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    disk_size_mb: Mapped[int] = mapped_column(Integer, nullable=False, server_default="5120")
    guest_ip: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    host_ip: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    created_at: Mapped[Created]
    started_at: Mapped[NullableTimestamp]
    last_active_at: Mapped[NullableTimestamp]
    last_updated: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    template_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    template_team_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    metadata_: Mapped[JsonObject] = mapped_column("metadata")
    error: Mapped[str] = mapped_column(Text, nullable=False, server_default="")


class MetricsSnapshot(Base):
    __tablename__ = "sandbox_metrics_snapshots"
    __table_args__ = (Index("ix_metrics_snapshots_team_sampled", "team_id", "sampled_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    team_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    sampled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    running_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    vcpus_reserved: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    memory_mb_reserved: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class MetricPoint(Base):
    __tablename__ = "sandbox_metric_points"

    sandbox_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tier: Mapped[str] = mapped_column(String(4), primary_key=True)
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    cpu_pct: Mapped[float] = mapped_column(Float, nullable=False, server_default="0")
    mem_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    disk_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")


class DailyUsage(Base):
    __tablename__ = "daily_usage"

    team_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    day: Mapped[datetime] = mapped_column(DateTime(timezone=False), primary_key=True)
    cpu_minutes: Mapped[float] = mapped_column(Numeric(18, 4), nullable=False, server_default="0")
    ram_mb_minutes: Mapped[float] = mapped_column(Numeric(18, 4), nullable=False, server_default="0")
