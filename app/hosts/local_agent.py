"""Embedded mode's local host agent: ``wrenn-cp serve`` runs one ``wrenn-agent`` child registered as a
platform host, so the one-command platform runs capsules. Its credentials and port live under
``<data-dir>/agent`` and are reused on restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
from pathlib import Path

import httpx

from app.core import clock, ids
from app.core.embedded import free_port
from app.core.state import AppState
from app.hosts.models import Host

log = logging.getLogger("wrenn.local_agent")
KEY = "local_agent"


def agent_dir(state: AppState) -> Path:
    return state.settings.data_dir / "agent"


def _traversable(path: Path) -> None:
    """Capsule uids must reach the agent's dirs (o+x on the path), never read them."""
    path.mkdir(parents=True, exist_ok=True)
    for p in (path, *path.parents):
        mode = p.stat().st_mode
        if not mode & 0o001:
            with contextlib.suppress(PermissionError):
                p.chmod(mode | 0o001)


async def start(state: AppState) -> None:
    if not state.settings.local_agent_cp_url:
        return
    state.extras[KEY] = asyncio.create_task(_launch(state))


async def stop(state: AppState) -> None:
    task: asyncio.Task[subprocess.Popen[bytes] | None] | None = state.extras.pop(KEY, None)
    if task is None:
        return
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return
    proc = task.result() if not task.cancelled() and task.exception() is None else None
    if proc is not None and proc.poll() is None:
        proc.terminate()  # the agent destroys its capsules on SIGTERM
        await asyncio.to_thread(_wait, proc)


def _wait(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


async def _launch(state: AppState) -> subprocess.Popen[bytes] | None:
    from app.hostagent.agent import spawn_local_agent

    url = state.settings.local_agent_cp_url
    await _wait_until_serving(url)
    home = agent_dir(state)
    _traversable(home)
    meta_path = home / "local-agent.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    token = None
    if not (home / "host-credentials.json").exists() or not await _host_exists(state, meta.get("host_id")):
        meta = {"port": meta.get("port") or free_port()}
        meta["host_id"], token = await _new_platform_host(state)
        meta_path.write_text(json.dumps(meta))
    log_file = open(home / "agent.log", "ab")  # noqa: SIM115, ASYNC230 - handed to the child
    proc = spawn_local_agent(url, token, home, int(meta["port"]), env={"WRENN_DIR": str(home)},
                             stdout=log_file, stderr=log_file)
    log.info("local host agent started (pid %s, port %s, log %s)", proc.pid, meta["port"], home / "agent.log")
    return proc


async def _wait_until_serving(url: str) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"control plane at {url} never became healthy")


async def _host_exists(state: AppState, host_ref: str | None) -> bool:
    host_id = ids.try_decode(ids.HOST, host_ref or "")
    if host_id is None:
        return False
    async with state.db() as db:
        return await db.get(Host, host_id) is not None


async def _new_platform_host(state: AppState) -> tuple[str, str]:
    """A regular (platform) host record plus its registration token, created by the system."""
    from app.hosts import service

    async with state.db() as db, db.begin():
        now = clock.now()
        host = Host(id=ids.new_uuid(), type="regular", provider="local", availability_zone="local",
                    status="pending", created_at=now, updated_at=now, metadata_={"embedded": "true"})
        db.add(host)
        await db.flush()
        token = await service.new_registration_token(state, db, host, None)
    return ids.encode(ids.HOST, host.id), token

