"""In-process app (httpx ASGI transport) against the real embedded Postgres and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from fastapi import FastAPI

from app.core.config import Settings
from app.main import create_app
from tests.api.helpers import Client, Platform


@pytest.fixture
async def app(settings: Settings, flushed_redis: None) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def platform(app: FastAPI, settings: Settings) -> AsyncIterator[Platform]:
    p = Platform(app, settings)
    yield p
    await p.close()


@pytest.fixture
async def anon(platform: Platform) -> Client:
    return platform.client()


ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def httpx_transport(app: FastAPI) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=app)
