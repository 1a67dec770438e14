"""Request bodies of the channel routes. Types are loose here (``Any``) so the service can answer a
400 that names the exact field (``config.url``, ``events[2]``…) instead of a generic validation error."""

from __future__ import annotations

from typing import Any

from app.core.schemas import Body


class CreateChannelRequest(Body):
    name: Any
    provider: Any
    config: Any
    events: Any


class UpdateChannelRequest(Body):
    name: Any
    events: Any


class RotateConfigRequest(Body):
    config: Any


class TestChannelRequest(Body):
    provider: Any
    config: Any
