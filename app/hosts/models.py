from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base
from app.core.types import Created, JsonObject, NullableTimestamp, Timestamp, UuidPk


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[UuidPk]
    type: Mapped[str] = mapped_column(String(16), nullable=False, server_default="regular", index=True)
    team_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("teams.id"), nullable=True, index=True
    )
    provider: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    availability_zone: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    arch: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    cpu_cores: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    memory_mb: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    disk_gb: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    address: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending", index=True)
    last_heartbeat_at: Mapped[NullableTimestamp]
    metadata_: Mapped[JsonObject] = mapped_column("metadata")
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[Created]
    updated_at: Mapped[Created]
    cert_fingerprint: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    cert_expires_at: Mapped[NullableTimestamp]


class HostToken(Base):
    __tablename__ = "host_tokens"

    id: Mapped[UuidPk]
    host_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[Created]
    expires_at: Mapped[Timestamp]
    used_at: Mapped[NullableTimestamp]


class HostTag(Base):
    __tablename__ = "host_tags"

    host_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(Text, primary_key=True, index=True)


class HostRefreshToken(Base):
    __tablename__ = "host_refresh_tokens"

    id: Mapped[UuidPk]
    host_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False, index=True
    )
    token_hash: Mapped[str] = mapped_column(Text, unique=True, nullable=False)
    expires_at: Mapped[Timestamp]
    created_at: Mapped[Created]
    revoked_at: Mapped[NullableTimestamp]
