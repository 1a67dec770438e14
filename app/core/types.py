"""Column helpers shared by the models."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from sqlalchemy import DateTime, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import mapped_column

UuidPk = Annotated[uuid.UUID, mapped_column(UUID(as_uuid=True), primary_key=True)]
Created = Annotated[datetime, mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)]
Timestamp = Annotated[datetime, mapped_column(DateTime(timezone=True), nullable=False)]
NullableTimestamp = Annotated[datetime | None, mapped_column(DateTime(timezone=True), nullable=True)]
JsonObject = Annotated[dict[str, Any], mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))]
