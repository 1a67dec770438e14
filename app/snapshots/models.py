from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base
from app.core.types import Created, JsonObject, UuidPk


class Template(Base):
    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("team_id", "name", name="uq_templates_team_name"),)

    id: Mapped[UuidPk]
    name: Mapped[str] = mapped_column(Text, nullable=False)
    type: Mapped[str] = mapped_column(String(16), nullable=False, server_default="base")
    vcpus: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    memory_mb: Mapped[int] = mapped_column(Integer, nullable=False, server_default="512")
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    created_at: Mapped[Created]
    team_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False, index=True)
    default_user: Mapped[str] = mapped_column(Text, nullable=False, server_default="root")
    default_env: Mapped[JsonObject]
    metadata_: Mapped[JsonObject] = mapped_column("metadata")
    created_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
