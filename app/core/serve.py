"""``wrenn-cp serve``: embedded services (when no URLs are set), migrations, bootstrap, HTTP server."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from types import FrameType

import uvicorn

from app.core import migrate
from app.core.bootstrap import bootstrap
from app.core.config import ConfigError, Settings
from app.core.embedded import EmbeddedServices

log = logging.getLogger("wrenn.serve")


def _display_url(settings: Settings, host: str, port: int) -> str:
    if settings.public_url:
        return settings.public_url.rstrip("/")
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


class _Stop(Exception):
    """Raised from the SIGTERM handler so clean-up code runs (uvicorn re-raises the signal it caught)."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


def run(settings: Settings, host: str, port: int, start_agent: bool = True) -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _run(settings, host, port, start_agent)
    except (_Stop, KeyboardInterrupt):
        log.info("stopped")


def _run(settings: Settings, host: str, port: int, start_agent: bool) -> None:
    settings.ensure_secrets()
    services: EmbeddedServices | None = None
    if not settings.database_url or not settings.redis_url:
        if settings.production:
            raise ConfigError("DATABASE_URL and REDIS_URL are required when WRENN_ENV=production")
        services = EmbeddedServices(settings.data_dir)
        pg_url, redis_url = services.start()
        settings.database_url = settings.database_url or pg_url
        settings.redis_url = settings.redis_url or redis_url
        log.info("embedded postgres and redis started under %s", settings.data_dir)
    try:
        migrate.upgrade(settings.database_url)
        url = _display_url(settings, host, port)
        if start_agent and not settings.local_agent_cp_url:
            settings.local_agent_cp_url = f"http://127.0.0.1:{port}" if host in ("", "0.0.0.0", "::") else url
        record = asyncio.run(bootstrap(settings, url))
        if record is not None:
            _announce(record, settings)
        _serve_http(settings, host, port)
    finally:
        if services is not None:
            services.stop()
            log.info("embedded services stopped")


def _announce(record: dict[str, str], settings: Settings) -> None:
    lines = [
        "",
        "Wrenn is ready. First-start credentials (also in %s, mode 0600):" % (settings.data_dir / "bootstrap.json"),
        f"  url:            {record['url']}",
        f"  admin email:    {record['admin_email']}",
        f"  admin password: {record['admin_password']}",
        f"  team id:        {record['team_id']}",
        f"  API key:        {record['api_key']}",
        "",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _serve_http(settings: Settings, host: str, port: int) -> None:
    from app.main import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        timeout_keep_alive=620,
        timeout_graceful_shutdown=30,
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies,
        access_log=False,
    )
    uvicorn.Server(config).run()
