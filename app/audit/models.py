from __future__ import annotations

import uuid

from sqlalchemy import Index, String, Text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base
from app.core.types import Created, JsonObject, UuidPk


class AuditLog(Base):
    __tablename__ = "audit_logs"
    __table_args__ = (
        Index("ix_audit_team_created", "team_id", "created_at", "id"),
        Index("ix_audit_team_resource_created", "team_id", "resource_type", "created_at"),
    )

    id: Mapped[UuidPk]
    team_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    actor_type: Mapped[str] = mapped_column(String(16), nullable=False)
    actor_id: Mapped[str | None] = mapped_column(Text)
    actor_name: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    resource_type: Mapped[str] = mapped_column(Text, nullable=False)
    resource_id: Mapped[str | None] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text, nullable=False)
    scope: Mapped[str] = mapped_column(String(8), nullable=False, server_default="team")
    status: Mapped[str] = mapped_column(String(8), nullable=False, server_default="success")
    ip_address: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    metadata_: Mapped[JsonObject] = mapped_column("metadata")
    created_at: Mapped[Created]
