"""Request bodies of the snapshot and admin-template routes."""

from __future__ import annotations

from pydantic import Field

from app.core.schemas import Body


class CreateSnapshotRequest(Body):
    sandbox_id: str = Field(max_length=64)
    name: str | None = Field(default=None, max_length=64)


class AdminSnapshotRequest(Body):
    name: str = Field(max_length=64)
