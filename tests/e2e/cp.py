"""Run ``wrenn-cp serve --no-agent`` processes on one shared Postgres + Redis (the session's embedded
services), the way replicas run in production: the shared secrets come from the environment."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CLI = str(Path(sys.executable).with_name("wrenn-cp"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shared_env(database_url: str, redis_url: str, ca: tuple[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "WRENN_", "JWT_"))}
    env.update({
        "WRENN_ENV": "development",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "JWT_SECRET": "replica-secret-" + "r" * 32,
        "WRENN_ENCRYPTION_KEY": "cd" * 32,
        "WRENN_CA_CERT": ca[0],
        "WRENN_CA_KEY": ca[1],
        "WRENN_COOKIE_SECURE": "false",
        **extra,
    })
    return env


@dataclass
class Replica:
    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> Replica:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"serve-{time.monotonic_ns()}.log"
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [CLI, "serve", "--data-dir", str(self.data_dir), "--port", str(self.port), "--host", "127.0.0.1",
             "--no-agent"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.output()}")
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server never became healthy:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: no clean-up runs, as in a crash."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def bootstrap(self) -> dict[str, str]:
        return dict(json.loads((self.data_dir / "bootstrap.json").read_text()))
