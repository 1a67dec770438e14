"""End-to-end harness: real ``wrenn-cp serve`` (+ its ``wrenn-agent`` child) and the official SDK as a client.

* ``sdk_python``: ``.sdk-venv`` built by ``scripts/sdk-venv.sh`` from the machine's Python 3.13 with
  ``wrenn==0.3.0``. A missing 3.13 fails the suite (it is a requirement, not an optional extra).
* ``platform``: one ``wrenn-cp serve`` per test session (per xdist worker) on a free loopback port with a
  fresh data dir under /var/tmp (capsule uids must traverse it), stopped with SIGTERM at the end.
* ``code_runner_template``: builds ``code-runner-beta`` from its recipe through the platform's build API
  (``wrenn-cp template build``); a failed build fails the code-runner tests with its log.
* ``sdk``: runs ``tests/e2e/sdk/scenarios/<script>.py <case>`` in the SDK venv as a separate process
  with ``WRENN_BASE_URL`` / ``WRENN_API_KEY`` and ``sdk_site/`` on ``PYTHONPATH`` (the sitecustomize
  that resolves ``{port}-{id}.127.0.0.1`` proxy hosts locally). The case asserts internally and prints
  a JSON result, which the test checks again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
SITE = HERE / "sdk_site"
CLI = str(Path(sys.executable).with_name("wrenn-cp"))
RESULT_MARK = "WRENN-RESULT "
CODE_RUNNER_RECIPE = ROOT / "templates" / "code-runner" / "recipe.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env(**extra: str) -> dict[str, str]:
    drop = ("DATABASE_URL", "REDIS_URL", "WRENN_", "JWT_", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    if os.environ.get("WRENN_TEMPLATES_DIR"):
        env["WRENN_TEMPLATES_DIR"] = os.environ["WRENN_TEMPLATES_DIR"]
    env.update(extra)
    return env


def _runtime_reason() -> str:
    if os.geteuid() != 0:
        return "the capsule runtime needs root (cgroups, veth, uid maps)"
    if not Path("/sys/fs/cgroup/freezer").is_dir():
        return "cgroup v1 freezer not mounted"
    return ""


@pytest.fixture(scope="session")
def sdk_python() -> Path:
    proc = subprocess.run([str(ROOT / "scripts" / "sdk-venv.sh")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"could not build the SDK venv (Python 3.13 + wrenn==0.3.0):\n{proc.stderr}\n{proc.stdout}",
                    pytrace=False)
    py = ROOT / ".sdk-venv" / "bin" / "python"
    version = subprocess.run([str(py), "-c", "import sys, wrenn; print(sys.version_info[:2] >= (3, 13))"],
                             capture_output=True, text=True)
    assert version.stdout.strip() == "True", version.stderr
    return py


@dataclass
class Platform:
    url: str
    api_key: str
    admin_email: str
    admin_password: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _wait_ready(proc: subprocess.Popen[bytes], data_dir: Path, port: int, log_path: Path) -> dict[str, str]:
    deadline = time.monotonic() + 120
    boot: dict[str, str] | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"wrenn-cp serve exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
        try:
            healthy = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            healthy = False
        if healthy and boot is None and (data_dir / "bootstrap.json").exists():
            boot = json.loads((data_dir / "bootstrap.json").read_text())
        if boot is not None:
            # the local agent registers itself as a platform host; capsules need it online
            with httpx.Client(base_url=boot["url"], timeout=5) as c:
                login = c.post("/v1/auth/login", json={"email": boot["admin_email"],
                                                       "password": boot["admin_password"]})
                if login.status_code == 200:
                    hosts = c.get("/v1/hosts")
                    if hosts.status_code == 200 and any(h.get("status") == "online" for h in hosts.json()):
                        return boot
        time.sleep(0.25)
    raise AssertionError(f"platform not ready (health, bootstrap, online host) in 120 s:\n"
                         f"{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def platform() -> Iterator[Platform]:
    reason = _runtime_reason()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="wrenn-e2e-", dir="/var/tmp"))
    os.chmod(base, 0o711)
    data_dir, port = base / "data", _free_port()
    log_path = base / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [CLI, "serve", "--data-dir", str(data_dir), "--port", str(port), "--host", "127.0.0.1"],
            env=_clean_env(PYTHONUNBUFFERED="1"), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        boot = _wait_ready(proc, data_dir, port, log_path)
        yield Platform(url=boot["url"], api_key=boot["api_key"], admin_email=boot["admin_email"],
                       admin_password=boot["admin_password"], data_dir=data_dir, proc=proc, log_path=log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if os.environ.get("WRENN_E2E_KEEP") != "1":
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"\n[e2e] kept {base} (serve log: {log_path})")


@pytest.fixture(scope="session")
def code_runner_template(platform: Platform) -> dict[str, Any]:
    """Build ``code-runner-beta`` the way an operator does: its recipe through the platform's build API
    (``wrenn-cp template build``), replacing the seeded row. The build runs in a capsule on the agent."""
    reason = _runtime_reason()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    proc = subprocess.run(
        [CLI, "template", "build", str(CODE_RUNNER_RECIPE), "--overwrite", "--data-dir", str(platform.data_dir)],
        cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=1800,
    )
    if proc.returncode != 0:
        pytest.fail(f"building code-runner-beta through the build API failed (exit {proc.returncode}):\n"
                    f"{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}\n--- server log ---\n{platform.log_tail(40)}",
                    pytrace=False)
    info = {"build_seconds": round(time.monotonic() - started, 1)}
    print(f"\n[e2e] code-runner-beta built through the build API in {info['build_seconds']} s")
    return info


SdkRunner = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def sdk(sdk_python: Path, platform: Platform) -> SdkRunner:
    def run(script: str, case: str, capsule: str | None = None, timeout: float = 120) -> dict[str, Any]:
        argv = [str(sdk_python), str(SCENARIOS / f"{script}.py"), case]
        if capsule:
            argv += ["--capsule", capsule]
        env = _clean_env(WRENN_BASE_URL=platform.url, WRENN_API_KEY=platform.api_key, PYTHONPATH=str(SITE),
                         PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        try:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=SCENARIOS)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"SDK scenario {script}:{case} timed out after {timeout} s\n"
                        f"--- stderr ---\n{(exc.stderr or b'')[-4000:]!r}\n--- server log ---\n{platform.log_tail()}",
                        pytrace=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
        if proc.returncode != 0 or not lines:
            pytest.fail(f"SDK scenario {script}:{case} failed (exit {proc.returncode})\n--- stderr ---\n"
                        f"{proc.stderr[-6000:]}\n--- stdout ---\n{proc.stdout[-2000:]}\n"
                        f"--- server log (tail) ---\n{platform.log_tail(40)}", pytrace=False)
        result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK):])
        return result

    return run
