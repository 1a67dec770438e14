"""The one clock. Everything that needs "now" asks here, so time is consistent and UTC."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)


def unix() -> int:
    return int(time.time())


def monotonic() -> float:
    return time.monotonic()


def iso(value: datetime | None) -> str | None:
    """RFC 3339 with a ``Z`` suffix, as the SDK parses it."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
