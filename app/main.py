"""The control-plane application: ``create_app(settings)``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse
from starlette.responses import Response

from app import __version__
from app.accounts.router import router as accounts_router
from app.admin.capsules_router import router as admin_capsules_router
from app.admin.router import router as admin_router
from app.admin.templates_router import router as admin_templates_router
from app.apikeys.router import router as apikeys_router
from app.audit.router import router as audit_router
from app.auth import sessions
from app.auth.deps import SessionExpired
from app.auth.oauth_router import router as oauth_router
from app.auth.router import router as auth_router
from app.builds import worker as build_worker
from app.builds.router import router as builds_router
from app.capsules import service as capsule_service
from app.capsules import usage as capsule_usage
from app.capsules.router import router as capsules_router
from app.capsules.ws import router as capsules_ws_router
from app.channels import delivery as channel_delivery
from app.channels.router import router as channels_router
from app.core.config import Settings
from app.core.db import make_engine, make_sessionmaker
from app.core.http import BodyGuardMiddleware, ORJSONResponse, install_error_handlers
from app.core.leader import LeaderLoop
from app.core.mail import Mailer
from app.core.redis import make_redis
from app.core.state import AppState
from app.events import hub as event_hub
from app.events.router import router as events_router
from app.hosts import agents, local_agent
from app.hosts import monitor as host_monitor
from app.hosts.router import router as hosts_router
from app.proxy.middleware import PortProxyMiddleware
from app.snapshots.router import router as snapshots_router
from app.teams.router import router as teams_router

log = logging.getLogger("wrenn")

SPEC_PATH = Path(__file__).resolve().parents[1] / "openapi" / "wrenn-openapi-0.2.0.yaml"

# Domains that own resources add (start, stop) callables here, in start order.
Lifecycle = tuple[Callable[[AppState], Awaitable[None]], Callable[[AppState], Awaitable[None]]]
# Per process (not leader-elected): the SSE stream reader, and the channel dispatcher's consumer.
LIFECYCLE: list[Lifecycle] = [(agents.start, agents.stop), (event_hub.start, event_hub.stop),
                              (channel_delivery.start, channel_delivery.stop), (local_agent.start, local_agent.stop),
                              (build_worker.start, build_worker.stop)]


def background_loops(state: AppState) -> list[LeaderLoop]:
    """Every replica runs these; only the leader of each acts (core/leader.py)."""
    s = state.settings
    return [
        LeaderLoop(state.engine, "host-monitor", s.monitor_interval_sec, lambda: host_monitor.tick(state)),
        LeaderLoop(state.engine, "session-cleaner", s.session_cleanup_interval_sec,
                   lambda: _purge_sessions(state)),
        LeaderLoop(state.engine, "metrics-sampler", capsule_usage.SAMPLE_INTERVAL_SEC,
                   lambda: _sample_metrics(state)),
        LeaderLoop(state.engine, "usage-rollup", capsule_usage.ROLLUP_INTERVAL_SEC,
                   lambda: capsule_usage.rollup(state)),
        LeaderLoop(state.engine, "build-worker", build_worker.TICK, lambda: build_worker.worker_of(state).tick()),
    ]


async def _purge_sessions(state: AppState) -> None:
    await sessions.purge_expired(state)


async def _sample_metrics(state: AppState) -> None:
    await capsule_usage.sample(state)


def create_app(settings: Settings) -> FastAPI:
    capsule_service.register_hooks()
    if not settings.database_url or not settings.redis_url:
        raise ValueError("create_app needs database_url and redis_url (the CLI starts embedded servers)")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        state = AppState(settings=settings, engine=engine, db=make_sessionmaker(engine),
                         redis=make_redis(settings.redis_url), mailer=Mailer(settings))
        app.state.wrenn = state
        started: list[Lifecycle] = []
        loops: list[LeaderLoop] = []
        try:
            for item in LIFECYCLE:
                await item[0](state)
                started.append(item)
            loops = background_loops(state)
            for loop in loops:
                loop.start()
            state.extras["loops"] = loops
            yield
        finally:
            for loop in loops:
                await _bounded(loop.stop(), f"loop {loop.name}")
            for item in reversed(started):
                await _bounded(item[1](state), getattr(item[1], "__module__", "stop"))
            await state.redis.aclose()
            await engine.dispose()

    app = FastAPI(title="Wrenn control plane", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json",
                  default_response_class=ORJSONResponse)
    install_error_handlers(app)

    @app.exception_handler(SessionExpired)
    async def _expired(request: Request, exc: SessionExpired) -> Response:
        response = ORJSONResponse(exc.body(), status_code=401)
        sessions.clear_session_cookies(response, request.app.state.wrenn, request)
        return response

    for router in (auth_router, oauth_router, accounts_router, apikeys_router, teams_router, admin_router,
                   hosts_router, capsules_router, capsules_ws_router):
        app.include_router(router)
    for router in (snapshots_router, admin_capsules_router, admin_templates_router):
        app.include_router(router)
    for router in (events_router, audit_router, channels_router, builds_router):
        app.include_router(router)
    _misc_routes(app)
    if settings.bench_endpoints:
        _bench_routes(app)
    app.add_middleware(BodyGuardMiddleware, json_limit=settings.max_json_body_bytes)
    app.add_middleware(PortProxyMiddleware)  # outermost: proxy hosts never reach routing or the body guard
    return app


STOP_LIMIT = 15.0


async def _bounded(stopping: Awaitable[None], what: str) -> None:
    """Shutdown must finish: a component that does not stop in time is logged and left behind."""
    try:
        await asyncio.wait_for(stopping, STOP_LIMIT)
    except TimeoutError:
        log.error("%s did not stop within %.0f s", what, STOP_LIMIT)
    except Exception:
        log.exception("%s failed to stop", what)


def _misc_routes(app: FastAPI) -> None:
    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/openapi.yaml", include_in_schema=False)
    async def spec() -> Response:
        if not SPEC_PATH.exists():
            return PlainTextResponse("spec not bundled", status_code=404)
        return Response(SPEC_PATH.read_bytes(), media_type="application/yaml")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(_SWAGGER_HTML)


def _bench_routes(app: FastAPI) -> None:
    """The floor for the GET benchmark: one indexed query, no auth, same app and serializer."""
    from sqlalchemy import select

    from app.capsules.models import Capsule
    from app.core import ids
    from app.core.state import get_state

    @app.get("/v1/_bench/floor/{capsule_id}", include_in_schema=False)
    async def floor(capsule_id: str, request: Request) -> dict[str, Any]:
        async with get_state(request).db() as db:
            row = await db.scalar(select(Capsule).where(Capsule.id == ids.decode(ids.CAPSULE, capsule_id)))
        return {"id": capsule_id, "status": row.status if row else None}


_SWAGGER_HTML = """<!doctype html><html><head><title>Wrenn API</title>
<link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div><script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: '/openapi.yaml', dom_id: '#ui'});</script></body></html>"""
