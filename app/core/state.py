"""Process-wide resources, created in the app lifespan and reached through ``request.app.state``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from app.core.config import Settings

if TYPE_CHECKING:
    from app.core.mail import Mailer


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    db: async_sessionmaker[AsyncSession]
    redis: Redis
    mailer: Mailer
    # Domain extensions (agent pool, event hub, …) register themselves here by name.
    extras: dict[str, Any] = field(default_factory=dict)


def get_state(conn: HTTPConnection) -> AppState:
    state: AppState = conn.app.state.wrenn
    return state
