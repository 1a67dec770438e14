"""Command-line entry points: ``wrenn-cp`` (control plane) and ``wrenn-agent`` (host agent)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from app.core.config import ConfigError, Settings

cp = typer.Typer(help="Wrenn control plane.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)
log = logging.getLogger("wrenn")

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="State directory (default: user data dir).")]


def _settings(data_dir: Path | None) -> Settings:
    settings = Settings()
    if data_dir is not None:
        settings.data_dir = data_dir.resolve()
    return settings


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cp.command()
def serve(
    data_dir: DataDir = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default 8080 or WRENN_CP_LISTEN_ADDR).")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    no_agent: Annotated[bool, typer.Option("--no-agent", help="Do not start the local host agent.")] = False,
) -> None:
    """Start the control plane (embedded Postgres and Redis unless DATABASE_URL / REDIS_URL are set)."""
    from app.core.serve import run

    settings = _settings(data_dir)
    _logging(settings.log_level)
    bind_host, bind_port = settings.listen_host_port
    try:
        run(settings, host or bind_host, port or bind_port, start_agent=not no_agent)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


@cp.command()
def migrate(data_dir: DataDir = None) -> None:
    """Apply database migrations to DATABASE_URL."""
    from app.core import migrate as migrations

    settings = _settings(data_dir)
    if not settings.database_url:
        console.print("[red]DATABASE_URL is not set[/red]")
        raise typer.Exit(2)
    migrations.upgrade(settings.database_url)
    console.print("migrations applied")


@cp.command()
def outbox(
    data_dir: DataDir = None,
    last: Annotated[int, typer.Option(help="Show only the last N messages.")] = 20,
) -> None:
    """Print emails the server would have sent (used when no SMTP server is configured)."""
    from app.core.mail import read_outbox

    settings = _settings(data_dir)
    messages = read_outbox(settings.outbox_dir)[-last:]
    if not messages:
        console.print(f"outbox is empty ({settings.outbox_dir})")
    for message in messages:
        print(f"--- {message['sent_at']}  to: {message['to']}\nSubject: {message['subject']}\n\n{message['body']}")


@cp.command("create-admin")
def create_admin(
    email: str,
    password: Annotated[str, typer.Option(prompt=True, hide_input=True)],
    name: str = "Admin",
    data_dir: DataDir = None,
) -> None:
    """Create a platform admin on DATABASE_URL / REDIS_URL."""
    from app.accounts import service as accounts
    from app.core.db import make_engine, make_sessionmaker
    from app.core.mail import Mailer
    from app.core.redis import make_redis
    from app.core.state import AppState

    settings = _settings(data_dir)
    if not settings.database_url or not settings.redis_url:
        console.print("[red]DATABASE_URL and REDIS_URL must be set[/red]")
        raise typer.Exit(2)

    async def _run() -> None:
        engine = make_engine(settings.database_url, pool_size=1)
        state = AppState(settings, engine, make_sessionmaker(engine), make_redis(settings.redis_url), Mailer(settings))
        try:
            await accounts.create_admin(state, email, password, name)
        finally:
            await state.redis.aclose()
            await engine.dispose()

    asyncio.run(_run())
    console.print(f"admin {email} created")


@cp.command("show-bootstrap")
def show_bootstrap(data_dir: DataDir = None) -> None:
    """Print the first-start credentials file."""
    path = _settings(data_dir).data_dir / "bootstrap.json"
    if not path.exists():
        console.print(f"no bootstrap file at {path}")
        raise typer.Exit(1)
    print(json.dumps(json.loads(path.read_text()), indent=2))


def _add_template_commands() -> None:
    from app.builds.cli import template_app

    cp.add_typer(template_app, name="template")


_add_template_commands()


def cp_main() -> None:
    cp()


def agent_main() -> None:
    from app.hostagent.agent import main

    sys.exit(main(sys.argv[1:]) or 0)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cp_main()
