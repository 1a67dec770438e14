"""Shared fixtures: one real embedded Postgres + Redis per test process, a fresh database per test."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.core import migrate
from app.core.config import Settings
from app.core.embedded import EmbeddedServices

TEMPLATE_DB = "wrenn_template"
_db_counter = itertools.count(1)


class Services:
    def __init__(self, root: Path) -> None:
        self.embedded = EmbeddedServices(root)
        self.pg_url, self.redis_url = self.embedded.start()
        pg = self.embedded.postgres
        self._psql([f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"', f'CREATE DATABASE "{TEMPLATE_DB}"'])
        migrate.upgrade(pg.url(TEMPLATE_DB))

    def _psql(self, statements: list[str]) -> None:
        pg = self.embedded.postgres
        for sql in statements:
            subprocess.run(
                [str(pg.bin / "psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-q", "-c", sql],
                check=True, capture_output=True, **pg._as_owner(),
            )

    def fresh_database(self) -> str:
        name = f"t{os.getpid()}_{next(_db_counter)}"
        self._psql([f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"'])
        return self.embedded.postgres.url(name)

    def redis_url_for(self, index: int) -> str:
        return self.redis_url.rsplit("/", 1)[0] + f"/{index}"


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    svc = Services(tmp_path_factory.mktemp("embedded"))
    yield svc
    svc.embedded.stop()


_redis_index = itertools.cycle(range(1, 64))


@pytest.fixture(scope="session")
def test_ca() -> tuple[str, str]:
    from app.hostagent.tls import generate_ca

    ca = generate_ca()
    return ca.cert_pem, ca.key_pem


@pytest.fixture
def settings(services: Services, tmp_path: Path, test_ca: tuple[str, str]) -> Settings:
    s = Settings(
        WRENN_ENV="development",
        WRENN_DIR=tmp_path / "data",
        DATABASE_URL=services.fresh_database(),
        REDIS_URL=services.redis_url_for(next(_redis_index)),
        JWT_SECRET="test-secret-" + "x" * 32,
        WRENN_ENCRYPTION_KEY="ab" * 32,
        WRENN_COOKIE_SECURE="false",
        OAUTH_REDIRECT_URL="http://frontend.test",
        WRENN_CA_CERT=test_ca[0],
        WRENN_CA_KEY=test_ca[1],
    )
    return s


@pytest.fixture
async def flushed_redis(settings: Settings) -> AsyncIterator[None]:
    from redis.asyncio import Redis

    client = Redis.from_url(settings.redis_url)
    await client.flushdb()
    await client.aclose()
    yield
