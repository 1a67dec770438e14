"""Base for request bodies: unknown fields ignored, types strict (no "1" → True coercion)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
