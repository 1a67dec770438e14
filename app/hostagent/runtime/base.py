"""The contract between the agent's RPC layer and a capsule runtime.

The RPC server (``app/hostagent/server.py``) translates hostagent.v1 messages into calls on a
``Runtime``; a runtime (``bwrap.py``) does the real work. Keeping this seam narrow lets the RPC
layer stay free of process/namespace details and lets the runtime be tested without HTTP.

Errors: a runtime raises ``RuntimeErr`` subclasses; the RPC layer maps each to its Connect code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


class RuntimeErr(Exception):
    """Base of every error a runtime raises. ``code`` is the Connect error code to report."""

    code = "internal"


class SandboxNotFound(RuntimeErr):
    code = "not_found"


class InvalidArgument(RuntimeErr):
    code = "invalid_argument"


class FailedPrecondition(RuntimeErr):
    """E.g. exec in a paused capsule."""

    code = "failed_precondition"


class PathNotFound(RuntimeErr):
    """A path inside the capsule does not exist (the CP maps this to 404)."""

    code = "not_found"


class AlreadyExists(RuntimeErr):
    code = "already_exists"


class ProcessNotFound(RuntimeErr):
    code = "not_found"


class DeadlineExceeded(RuntimeErr):
    code = "deadline_exceeded"


@dataclass
class CreateSpec:
    sandbox_id: str
    team_id: str  # UUID of the team owning the template; all-zero = platform
    template_id: str  # UUID; all-zero = minimal
    vcpus: int = 1
    memory_mb: int = 512
    disk_size_mb: int = 5120
    timeout_sec: int = 0  # inactivity TTL; 0 = never auto-pause
    default_user: str = ""
    default_env: dict[str, str] = field(default_factory=dict)
    template_name: str = ""


@dataclass
class SandboxInfo:
    sandbox_id: str
    status: str  # pending | running | paused | stopped | error
    host_ip: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    team_id: str
    template_id: str
    created_at_unix: int
    last_active_at_unix: int
    disk_size_mb: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


@dataclass
class ExecEvent:
    """One event of a streamed process: exactly one of the kinds is meaningful."""

    kind: str  # "start" | "stdout" | "stderr" | "end"
    pid: int = 0
    data: bytes = b""
    exit_code: int = 0
    error: str = ""


@dataclass
class ProcessInfo:
    pid: int
    tag: str
    cmd: str
    args: list[str]


@dataclass
class FileInfo:
    name: str
    path: str
    type: str  # file | directory | symlink
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_at: int
    symlink_target: str | None = None


@dataclass
class PtyEvent:
    kind: str  # "started" | "output" | "exited"
    pid: int = 0
    tag: str = ""
    data: bytes = b""
    exit_code: int = 0
    error: str = ""


@dataclass
class MetricSample:
    timestamp_unix: int
    cpu_pct: float
    mem_bytes: int
    disk_bytes: int


@dataclass
class FlushedMetrics:
    points_10m: list[MetricSample]
    points_2h: list[MetricSample]
    points_24h: list[MetricSample]


class Runtime(Protocol):
    """Everything the hostagent.v1 service needs from the machine. All methods are async."""

    # lifecycle
    async def create(self, spec: CreateSpec) -> SandboxInfo: ...
    async def destroy(self, sandbox_id: str) -> None: ...
    async def pause(self, sandbox_id: str) -> None: ...
    async def resume(
        self, sandbox_id: str, timeout_sec: int, default_user: str, default_env: dict[str, str]
    ) -> SandboxInfo: ...
    async def ping(self, sandbox_id: str) -> None: ...
    async def list_sandboxes(self) -> list[SandboxInfo]: ...
    def drain_auto_paused(self) -> list[str]: ...
    async def shutdown(self) -> None:
        """Destroy every capsule (Terminate, agent exit)."""
        ...

    # exec and processes
    async def exec(
        self,
        sandbox_id: str,
        cmd: str,
        args: list[str],
        timeout_sec: int,
        envs: dict[str, str],
        cwd: str,
    ) -> ExecResult: ...
    def exec_stream(
        self, sandbox_id: str, cmd: str, args: list[str], timeout_sec: int
    ) -> AsyncIterator[ExecEvent]: ...
    async def start_background(
        self, sandbox_id: str, cmd: str, args: list[str], tag: str, envs: dict[str, str], cwd: str
    ) -> int: ...
    async def list_processes(self, sandbox_id: str) -> list[ProcessInfo]: ...
    async def kill_process(self, sandbox_id: str, pid: int | None, tag: str | None, signal: str) -> None: ...
    def connect_process(self, sandbox_id: str, pid: int | None, tag: str | None) -> AsyncIterator[ExecEvent]: ...

    # files (paths are inside the capsule; the runtime must refuse to escape its root)
    async def write_file(self, sandbox_id: str, path: str, content: bytes) -> None: ...
    async def read_file(self, sandbox_id: str, path: str) -> bytes: ...
    async def write_file_stream(self, sandbox_id: str, path: str, chunks: AsyncIterator[bytes]) -> None: ...
    def read_file_stream(self, sandbox_id: str, path: str) -> AsyncIterator[bytes]: ...
    async def list_dir(self, sandbox_id: str, path: str, depth: int) -> list[FileInfo]: ...
    async def make_dir(self, sandbox_id: str, path: str) -> FileInfo: ...
    async def remove_path(self, sandbox_id: str, path: str) -> None: ...

    # PTY
    def pty_attach(
        self,
        sandbox_id: str,
        tag: str,
        cmd: str,
        args: list[str],
        cols: int,
        rows: int,
        envs: dict[str, str],
        cwd: str,
        user: str,
    ) -> AsyncIterator[PtyEvent]: ...
    async def pty_input(self, sandbox_id: str, tag: str, data: bytes) -> None: ...
    async def pty_resize(self, sandbox_id: str, tag: str, cols: int, rows: int) -> None: ...
    async def pty_kill(self, sandbox_id: str, tag: str) -> None: ...

    # snapshots / templates
    async def create_snapshot(self, sandbox_id: str, team_id: str, template_id: str, name: str) -> int: ...
    async def flatten_rootfs(self, sandbox_id: str, team_id: str, template_id: str, name: str) -> int: ...
    async def delete_snapshot(self, team_id: str, template_id: str) -> None: ...
    async def template_size(self, team_id: str, template_id: str) -> int: ...

    # metrics
    async def get_metrics(self, sandbox_id: str, range_: str) -> list[MetricSample]: ...
    async def flush_metrics(self, sandbox_id: str) -> FlushedMetrics: ...

    # port proxy: the address (ip, port) the agent connects to for a capsule port
    def proxy_target(self, sandbox_id: str, port: int) -> tuple[str, int]: ...
