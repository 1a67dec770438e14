"""Template start command: a process the runtime launches in every new capsule of a template.

Where it lives: inside the template's rootfs at ``/etc/wrenn/start.json`` (``START_PATH``). Keeping it
in the rootfs rather than next to it means a snapshot of a capsule inherits it automatically (the
snapshot is a copy of the capsule's filesystem), and a template is one self-describing directory.

Format (JSON object)::

    {"cmd": "jupyter server --config=/etc/jupyter/jupyter_server_config.py",   # required, run by /bin/sh -c
     "user": "wrenn-user",                  # default: the capsule's default user
     "cwd": "/home/wrenn-user",             # default: that user's home
     "env": {"PATH": "/opt/wrenn/venv/bin:/usr/local/bin:/usr/bin:/bin"},
     "tag": "start",                        # process tag shown by GET /processes (default "start")
     "ready": {"port": 8888, "timeout_sec": 30}}   # optional: wait until the port accepts connections

When: after a capsule is created (and booted), before it is reported ``running``. Not after resume:
pause is a cgroup freeze, so the process is still there when the capsule thaws.

Readiness: with ``ready.port`` the runtime waits (up to ``timeout_sec``) until a TCP connection to
that port inside the capsule succeeds, so a client that sees ``running`` finds the service up. A
service that is slow to come up does not fail the capsule: the wait just ends (the SDK's code runner
retries while the proxy answers 502). A start command that cannot be launched at all (unknown user,
bad cwd, malformed file) fails the create with a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

START_PATH = "/etc/wrenn/start.json"
DEFAULT_TAG = "start"
MAX_READY_TIMEOUT = 300.0


class StartSpecError(ValueError):
    """``/etc/wrenn/start.json`` exists but is not a valid start specification."""


@dataclass
class StartSpec:
    cmd: str
    user: str = ""
    cwd: str = ""
    env: dict[str, str] = field(default_factory=dict)
    tag: str = DEFAULT_TAG
    ready_port: int = 0
    ready_timeout: float = 30.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cmd": self.cmd, "tag": self.tag}
        if self.user:
            out["user"] = self.user
        if self.cwd:
            out["cwd"] = self.cwd
        if self.env:
            out["env"] = dict(self.env)
        if self.ready_port:
            out["ready"] = {"port": self.ready_port, "timeout_sec": self.ready_timeout}
        return out


def parse_start_spec(raw: bytes | str | dict[str, Any]) -> StartSpec:
    """Validate and parse a start specification (file bytes or an already decoded object)."""
    if isinstance(raw, dict):
        data: Any = raw
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StartSpecError(f"{START_PATH}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise StartSpecError(f"{START_PATH}: must be a JSON object")
    cmd = data.get("cmd")
    if not isinstance(cmd, str) or not cmd.strip():
        raise StartSpecError(f"{START_PATH}: 'cmd' must be a non-empty string")
    for key in ("user", "cwd", "tag"):
        if key in data and not isinstance(data[key], str):
            raise StartSpecError(f"{START_PATH}: {key!r} must be a string")
    env = data.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise StartSpecError(f"{START_PATH}: 'env' must map strings to strings")
    ready = data.get("ready") or {}
    if not isinstance(ready, dict):
        raise StartSpecError(f"{START_PATH}: 'ready' must be an object")
    port = ready.get("port", 0)
    timeout = ready.get("timeout_sec", 30)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise StartSpecError(f"{START_PATH}: 'ready.port' must be an integer 1-65535")
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
        raise StartSpecError(f"{START_PATH}: 'ready.timeout_sec' must be a non-negative number")
    return StartSpec(
        cmd=cmd, user=data.get("user", ""), cwd=data.get("cwd", ""), env=dict(env),
        tag=data.get("tag") or DEFAULT_TAG, ready_port=port, ready_timeout=min(float(timeout), MAX_READY_TIMEOUT),
    )


async def wait_for_port(ip: str, port: int, timeout: float, is_alive: Any = None) -> bool:  # noqa: ASYNC109
    """Poll a TCP connect to ``ip:port`` until it succeeds (True) or ``timeout`` passes (False).

    ``is_alive``: optional callable; when it returns False (the start process died) stop early.
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 1.0)
        except (OSError, TimeoutError):
            pass
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        if time.monotonic() >= deadline or (is_alive is not None and not is_alive()):
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.25)
