"""``wrenn-cp serve`` as a real process: embedded services, bootstrap, clean stop, restart keeps data."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

CLI = str(Path(sys.executable).with_name("wrenn-cp"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "WRENN_", "JWT_"))}
    env.update(extra)
    return env


def _start(data_dir: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [CLI, "serve", "--data-dir", str(data_dir), "--port", str(port), "--host", "127.0.0.1", "--no-agent"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_healthy(proc: subprocess.Popen[str], port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server never became healthy")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def _servers_under(data_dir: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(data_dir) in cmd and ("postgres" in cmd or "redis-server" in cmd):
            found.append(p)
    return found


def test_serve_bootstraps_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", _free_port()
    proc = _start(data_dir, port)
    try:
        _wait_healthy(proc, port)
        boot_path = data_dir / "bootstrap.json"
        assert stat.S_IMODE(boot_path.stat().st_mode) == 0o600
        boot = json.loads(boot_path.read_text())
        assert set(boot) == {"url", "admin_email", "admin_password", "team_id", "api_key"}
        assert boot["url"] == f"http://127.0.0.1:{port}" and boot["api_key"].startswith("wrn_")
        base = boot["url"]
        health = httpx.get(f"{base}/health").json()
        assert health["status"] == "ok"
        login = httpx.post(f"{base}/v1/auth/login",
                           json={"email": boot["admin_email"], "password": boot["admin_password"]})
        assert login.status_code == 200 and login.json()["is_admin"] is True
        assert login.json()["team_id"] == boot["team_id"]
        keys = httpx.get(f"{base}/v1/api-keys", cookies=login.cookies).json()
        assert [k["key_prefix"] for k in keys] == [boot["api_key"][:10]]
    finally:
        out = _stop(proc)
    assert boot["admin_password"] in out  # printed once at first start
    assert _servers_under(data_dir) == []  # embedded Postgres and Redis stopped with it

    proc = _start(data_dir, port)
    try:
        _wait_healthy(proc, port)
        again = httpx.post(f"http://127.0.0.1:{port}/v1/auth/login",
                           json={"email": boot["admin_email"], "password": boot["admin_password"]})
        assert again.status_code == 200  # data survived the restart
        assert json.loads((data_dir / "bootstrap.json").read_text()) == boot  # not regenerated
    finally:
        out = _stop(proc)
    assert boot["admin_password"] not in out  # credentials printed only once
    assert _servers_under(data_dir) == []


@pytest.mark.parametrize(("missing", "env"), [
    ("JWT_SECRET", {}),
    ("WRENN_ENCRYPTION_KEY", {"JWT_SECRET": "s" * 40}),
    ("DATABASE_URL", {"JWT_SECRET": "s" * 40, "WRENN_ENCRYPTION_KEY": "ab" * 32}),
])
def test_production_mode_names_the_missing_variable(tmp_path: Path, missing: str, env: dict[str, str]) -> None:
    result = subprocess.run(
        [CLI, "serve", "--data-dir", str(tmp_path), "--port", str(_free_port()), "--no-agent"],
        env=_env(WRENN_ENV="production", **env), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert missing in result.stderr + result.stdout
    assert not (tmp_path / "secrets.json").exists()  # production never invents secrets
