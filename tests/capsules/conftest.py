"""A live stack per test module: the control plane on a real port (uvicorn in a thread, real embedded
Postgres and Redis) and a real ``wrenn-agent`` process registered to it, running real capsules."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from app.core.db import make_engine, make_sessionmaker
from app.core.embedded import free_port
from app.hostagent.agent import spawn_local_agent
from app.main import create_app
from openapi.conformance import ConformanceRecorder
from tests.api.helpers import Client, Platform
from tests.conftest import Services
from tests.fakes.github import ServerThread


@dataclass
class Stack:
    url: str
    settings: Settings
    server: ServerThread
    agent: subprocess.Popen[bytes]
    agent_dir: Path
    agent_port: int
    host_id: str
    admin_cookies: httpx.Cookies
    api_key: str
    team_id: str

    def restart_agent(self) -> None:
        self.agent = _spawn(self.url, None, self.agent_dir, self.agent_port)


def _spawn(url: str, token: str | None, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    log = open(data_dir / "agent.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
    return spawn_local_agent(url, token, data_dir, port, env={"WRENN_HEARTBEAT_INTERVAL": "1"}, stdout=log, stderr=log)


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def stack(services: Services, tmp_path_factory: pytest.TempPathFactory, test_ca: tuple[str, str]) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    os.chmod(root, 0o711)
    settings = Settings(
        WRENN_ENV="development", WRENN_DIR=root / "cp", DATABASE_URL=services.fresh_database(),
        REDIS_URL=services.redis_url_for(0), JWT_SECRET="stack-secret-" + "y" * 32,
        WRENN_ENCRYPTION_KEY="cd" * 32, WRENN_COOKIE_SECURE="false", WRENN_CA_CERT=test_ca[0],
        WRENN_CA_KEY=test_ca[1], WRENN_MONITOR_INTERVAL="1", WRENN_HOST_DEAD_AFTER="4",
    )
    import redis

    redis.Redis.from_url(settings.redis_url).flushdb()
    server = ServerThread(create_app(settings)).__enter__()
    url = f"http://127.0.0.1:{server.port}"
    agent: subprocess.Popen[bytes] | None = None
    try:
        cookies, api_key, team_id = _admin(url, settings)
        with httpx.Client(base_url=url, cookies=cookies, timeout=30) as admin:
            r = admin.post("/v1/hosts", json={"type": "regular"}, headers={"X-CSRF-Token": cookies["wrenn_csrf"]})
            assert r.status_code == 201, r.text
            host_id, token = r.json()["host"]["id"], r.json()["registration_token"]
            agent_dir = root / "agent"
            agent_dir.mkdir(mode=0o711)
            port = free_port()
            agent = _spawn(url, token, agent_dir, port)
            _wait(lambda: admin.get(f"/v1/hosts/{host_id}").json().get("status") == "online", 60, "agent online")
        st = Stack(url, settings, server, agent, agent_dir, port, host_id, cookies, api_key, team_id)
        yield st
        agent = st.agent
    finally:
        if agent is not None and agent.poll() is None:
            agent.terminate()
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
        server.__exit__(None, None, None)


def _admin(url: str, settings: Settings) -> tuple[httpx.Cookies, str, str]:
    import re

    from app.core.mail import read_outbox
    from tests.api.helpers import PASSWORD

    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/auth/signup", json={"email": "admin@example.com", "password": PASSWORD, "name": "Admin"})
        assert r.status_code == 201, r.text
        body = read_outbox(settings.outbox_dir)[-1]["body"]
        token = re.search(r"token=([0-9a-f]+)", body).group(1)  # type: ignore[union-attr]
        r = c.post("/v1/auth/activate", json={"token": token})
        assert r.status_code == 200, r.text
        team_id = r.json()["team_id"]
        r = c.post("/v1/api-keys", json={"name": "tests"}, headers={"X-CSRF-Token": c.cookies["wrenn_csrf"]})
        assert r.status_code == 201, r.text
        return c.cookies, r.json()["key"], team_id


@pytest.fixture
async def sdk(stack: Stack) -> AsyncIterator[Client]:
    """An API-key client, the way the SDK talks to the platform."""
    client = Client(stack.url, headers={"X-API-Key": stack.api_key})
    yield client
    await client.http.aclose()


@pytest.fixture
async def live(stack: Stack) -> AsyncIterator[Platform]:
    platform = Platform(stack.url, stack.settings)
    yield platform
    await platform.close()


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[Any]:
    engine = make_engine(stack.settings.database_url)
    yield make_sessionmaker(engine)
    await engine.dispose()


# Statuses the contract gives these operations although the spec's per-operation lists omit them:
# createSnapshot 404 (capsule not in the team, control-plane.md §9.1); createCapsule 404 (unknown template,
# §6.3); adminCreateSnapshotFromCapsule 409 (name_reserved, invalid_state: §9.1 applies); adminDeleteTemplate
# 403/409 (built-in / in use, §5.4).
CONTRACT_STATUSES = {("createSnapshot", 404), ("createCapsule", 404), ("adminCreateSnapshotFromCapsule", 409),
                     ("adminDeleteTemplate", 403), ("adminDeleteTemplate", 409)}


@pytest.fixture
def conformance() -> Iterator[ConformanceRecorder]:
    """Checks every response of the clients it wraps against the spec (schemas with every property)."""
    recorder = ConformanceRecorder(raise_on_failure=False, require_properties=True)
    yield recorder
    bad = [str(c) for c in recorder.checked if not c.ok and not (
        c.operation is not None and (c.operation.operation_id, c.status) in CONTRACT_STATUSES
        and all(p.startswith(f"status {c.status} is not documented") for p in c.problems))]
    assert not bad, bad
