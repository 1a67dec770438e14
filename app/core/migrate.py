"""Apply Alembic migrations programmatically (``wrenn-cp migrate`` and start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str) -> None:
    """Upgrade to head. Concurrent replicas serialise on a Postgres advisory lock (taken in env.py)."""
    command.upgrade(alembic_config(url), "head")
