"""Template builds with real processes: ``wrenn-cp serve`` (its embedded local agent, or a separately run
``wrenn-agent``), the ``wrenn-cp template build`` CLI, and a control plane killed with SIGKILL mid-build."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.core.embedded import free_port
from app.hostagent.agent import spawn_local_agent
from tests.conftest import Services

CLI = str(Path(sys.executable).with_name("wrenn-cp"))
pytestmark = pytest.mark.timeout(600)


class ControlPlane:
    """``wrenn-cp serve`` on loopback against the test session's Postgres and Redis."""

    def __init__(self, data_dir: Path, env: dict[str, str], agent: bool) -> None:
        self.data_dir, self.env, self.agent = data_dir, env, agent
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.data_dir.parent / "cp.log", "ab")  # noqa: SIM115 - owned by the child
        argv = [CLI, "serve", "--data-dir", str(self.data_dir), "--port", str(self.port), "--host", "127.0.0.1"]
        self.proc = subprocess.Popen(argv + ([] if self.agent else ["--no-agent"]), env=self.env, stdout=log,
                                     stderr=log)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.data_dir.parent / "cp.log").read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("control plane never became healthy")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def admin(self) -> httpx.Client:
        boot = json.loads((self.data_dir / "bootstrap.json").read_text())
        client = httpx.Client(base_url=self.url, timeout=60)
        r = client.post("/v1/auth/login", json={"email": boot["admin_email"], "password": boot["admin_password"]})
        assert r.status_code == 200, r.text
        client.headers["X-CSRF-Token"] = client.cookies["wrenn_csrf"]
        return client


def _env(services: Services) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "WRENN_", "JWT_"))}
    redis_url = services.redis_url_for(0)
    redis.Redis.from_url(redis_url).flushdb()
    env.update(DATABASE_URL=services.fresh_database(), REDIS_URL=redis_url, WRENN_ENV="development",
               WRENN_COOKIE_SECURE="false", WRENN_MONITOR_INTERVAL="1", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o711)  # capsule uids must traverse the agent's directories
    return tmp_path


def _wait(predicate: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENN_")}
    return subprocess.run([CLI, "template", "build", *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=env)


@pytest.fixture
def embedded(services: Services, workdir: Path) -> Iterator[ControlPlane]:
    """A local platform: ``wrenn-cp serve`` with its own embedded host agent."""
    cp = ControlPlane(workdir / "data", _env(services), agent=True)
    cp.start()
    try:
        with closing(cp.admin()) as admin:
            _wait(lambda: [h for h in admin.get("/v1/hosts").json() if h["status"] == "online"], 90, "local agent")
        yield cp
    finally:
        cp.stop()


def test_cli_builds_a_recipe_shows_progress_and_exits_by_outcome(embedded: ControlPlane, workdir: Path) -> None:
    good = workdir / "good.json"
    good.write_text(json.dumps({
        "name": "cli-tpl", "description": "from the CLI",
        "steps": [{"name": "greet", "run": "for i in 1 2 3; do echo line-$i; done"},
                  {"file": "/etc/cli-made", "content": "yes\n"}],
        "start": {"cmd": "exec python3 -m http.server 7000", "ready": {"port": 7000, "timeout_sec": 20}},
    }))
    result = _cli(str(good), "--data-dir", str(embedded.data_dir), cwd=workdir)
    out = result.stderr + result.stdout
    assert result.returncode == 0, out
    assert "queued: 'cli-tpl' from 'minimal', 3 steps" in out
    assert "step 1/3 greet" in out and "  | line-1" in out and "  | line-3" in out
    assert "✔ step 1 success" in out and "✔ step 3 success" in out and "port 7000 answers" in out
    assert "built template 'cli-tpl'" in out

    bad = workdir / "bad.yaml"
    bad.write_text("name: cli-fails\nsteps:\n  - name: fine\n    run: echo ok\n"
                   "  - name: boom\n    run: echo broken >&2; exit 4\n")
    result = _cli(str(bad), "--data-dir", str(embedded.data_dir), cwd=workdir)
    out = result.stderr + result.stdout
    assert result.returncode == 1, out
    assert "✘ step 2 failed" in out and "exit code 4" in out and "  | broken" in out
    assert "failed at step 2 (boom)" in out

    # Refusals exit 2 with the API's message: a name that is taken, an empty recipe, a file that is not JSON.
    result = _cli(str(good), "--data-dir", str(embedded.data_dir), cwd=workdir)
    assert result.returncode == 2 and "template_name_taken" in result.stderr, result.stderr
    (workdir / "empty.json").write_text("{}")
    result = _cli(str(workdir / "empty.json"), "--data-dir", str(embedded.data_dir), cwd=workdir)
    assert result.returncode == 2 and "the recipe is empty" in result.stderr, result.stderr
    (workdir / "broken.json").write_text("{nope")
    result = _cli(str(workdir / "broken.json"), "--data-dir", str(embedded.data_dir), cwd=workdir)
    assert result.returncode == 2 and "not valid JSON" in result.stderr, result.stderr

    # On a terminal: live progress bars and the running step's log tail in a panel.
    command = " ".join([CLI, "template", "build", str(good), "--data-dir", str(embedded.data_dir), "--name",
                        "cli-tty-tpl"])
    tty = subprocess.run(["script", "-q", "-e", "-c", command, "/dev/null"], capture_output=True, text=True,
                         timeout=300, cwd=workdir, env={**os.environ, "COLUMNS": "120", "LINES": "40"})
    screen = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", tty.stdout)
    assert tty.returncode == 0, screen[-3000:]
    assert "━" in screen and "✔  1. greet" in screen and "built template 'cli-tty-tpl'" in screen

    with closing(embedded.admin()) as admin:
        builds = admin.get("/v1/admin/builds").json()
        assert [b["status"] for b in builds] == ["success", "failed", "success"]
        for name in ("cli-tpl", "cli-tty-tpl"):
            assert admin.delete(f"/v1/admin/templates/{name}").status_code == 204


def test_build_in_progress_when_the_control_plane_is_killed_fails_after_restart(
    services: Services, workdir: Path,
) -> None:
    cp = ControlPlane(workdir / "data", _env(services), agent=False)
    agent: subprocess.Popen[bytes] | None = None
    try:
        cp.start()
        with closing(cp.admin()) as admin:
            r = admin.post("/v1/hosts", json={"type": "regular"})
            assert r.status_code == 201, r.text
            host_id, token = r.json()["host"]["id"], r.json()["registration_token"]
            agent_dir = workdir / "agent"
            agent_dir.mkdir(mode=0o711)
            log = open(agent_dir / "agent.log", "ab")  # noqa: SIM115 - owned by the child
            # The agent is the test's child, not the CP's: it outlives the killed control plane.
            agent = spawn_local_agent(cp.url, token, agent_dir, free_port(), env={"WRENN_HEARTBEAT_INTERVAL": "1"},
                                      stdout=log, stderr=log)
            _wait(lambda: admin.get(f"/v1/hosts/{host_id}").json().get("status") == "online", 60, "agent online")
            r = admin.post("/v1/admin/builds", json={"name": "killed-tpl", "steps": [
                {"name": "quick", "run": "echo one"}, {"name": "long", "run": "echo sleeping; sleep 600"}]})
            assert r.status_code == 202, r.text
            build_id = r.json()["id"]
            running = _wait(lambda: (b := admin.get(f"/v1/admin/builds/{build_id}").json())["steps"][1]["status"]
                            == "running" and b, 120, "step 2 running")
        capsule_id = running["sandbox_id"]
        assert (agent_dir / "capsules" / capsule_id).is_dir()

        cp.kill()  # SIGKILL: no shutdown handling at all
        cp.start()
        with closing(cp.admin()) as admin:
            build = _wait(lambda: (b := admin.get(f"/v1/admin/builds/{build_id}").json())["status"] == "failed"
                          and b, 60, "build marked failed")
            assert build["failed_step"] == {"index": 2, "name": "long", "phase": "interrupted"}
            assert "the control plane that ran this build stopped at step 2 ('long')" in build["error"]
            assert [s["status"] for s in build["steps"]] == ["success", "failed"]
            assert build["cleaned_up"] is True
            capsule = admin.get(f"/v1/admin/capsules/{capsule_id}").json()
            assert capsule["status"] == "stopped"
            _wait(lambda: not (agent_dir / "capsules" / capsule_id).exists(), 30, "build capsule removed on the host")
            assert "killed-tpl" not in [t["name"] for t in admin.get("/v1/admin/templates").json()]
            # The queue still works after the restart.
            r = admin.post("/v1/admin/builds", json={"name": "after-restart", "steps": [{"run": "true"}]})
            after = _wait(lambda: (b := admin.get(f"/v1/admin/builds/{r.json()['id']}").json())["status"]
                          in ("success", "failed") and b, 120, "second build")
            assert after["status"] == "success", after
            assert admin.delete("/v1/admin/templates/after-restart").status_code == 204

            # A clean stop (SIGTERM) fails its running build itself and removes the build capsule.
            r = admin.post("/v1/admin/builds", json={"name": "stopped-tpl", "steps": [{"name": "wait",
                                                                                      "run": "sleep 600"}]})
            stopped_id = r.json()["id"]
            running = _wait(lambda: (b := admin.get(f"/v1/admin/builds/{stopped_id}").json())["steps"][0]["status"]
                            == "running" and b, 120, "step 1 running")
        cp.stop()
        assert cp.proc is not None and cp.proc.returncode == 0
        cp.start()
        with closing(cp.admin()) as admin:
            build = admin.get(f"/v1/admin/builds/{stopped_id}").json()
            assert build["status"] == "failed" and build["cleaned_up"], build
            assert build["error"] == "the control plane shut down during the build"
            assert build["failed_step"]["index"] == 1
            assert admin.get(f"/v1/admin/capsules/{running['sandbox_id']}").json()["status"] == "stopped"
            assert not (agent_dir / "capsules" / running["sandbox_id"]).exists()
    finally:
        cp.stop()
        if agent is not None and agent.poll() is None:
            agent.terminate()
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
