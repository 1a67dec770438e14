from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Boolean, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base
from app.core.types import Created, JsonObject, NullableTimestamp, UuidPk


class TemplateBuild(Base):
    __tablename__ = "template_builds"

    id: Mapped[UuidPk]
    name: Mapped[str] = mapped_column(Text, nullable=False)
    base_template: Mapped[str] = mapped_column(Text, nullable=False, server_default="minimal")
    recipe: Mapped[Any] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"))
    healthcheck: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    vcpus: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    memory_mb: Mapped[int] = mapped_column(Integer, nullable=False, server_default="512")
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending")
    current_step: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    total_steps: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    logs: Mapped[Any] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"))
    error: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    sandbox_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    host_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    created_at: Mapped[Created]
    started_at: Mapped[NullableTimestamp]
    completed_at: Mapped[NullableTimestamp]
    template_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    team_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    skip_pre_post: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    default_user: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    default_env: Mapped[JsonObject]
    metadata_: Mapped[JsonObject] = mapped_column("metadata")
