"""Every hostagent.v1 RPC through the real agent server and CP client: request → Runtime call → response.

The runtime is ``RecordingRuntime``, a TEST-ONLY double defined here that records each call's arguments
and returns canned values, so the translation done by server.py is checked field by field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from app.hostagent import tls
from app.hostagent.client import AgentClient, AgentError
from app.hostagent.proto import hostagent_pb2 as pb
from app.hostagent.runtime.base import (
    ExecEvent,
    ExecResult,
    FileInfo,
    FlushedMetrics,
    MetricSample,
    ProcessInfo,
    PtyEvent,
    SandboxInfo,
)
from app.hostagent.server import METHODS, AgentThread, build_agent_app

TEAM = "11111111-2222-3333-4444-555555555555"
TPL = "66666666-7777-8888-9999-000000000000"
ZERO = "00000000-0000-0000-0000-000000000000"
INFO = SandboxInfo("cl-a", "running", "10.0.0.2", 2, 1024, 300, TEAM, TPL, 100, 200, 6000, {"k": "v"})
FILE = FileInfo("f", "/d/f", "symlink", 3, 0o777, "lrwxrwxrwx", "root", "root", 1700000000, "/target")
SAMPLE = MetricSample(1, 12.5, 100, 200)


class RecordingRuntime:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _rec(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    async def create(self, spec: Any) -> SandboxInfo:
        self._rec("create", spec)
        return INFO

    async def destroy(self, sid: str) -> None:
        self._rec("destroy", sid)

    async def pause(self, sid: str) -> None:
        self._rec("pause", sid)

    async def resume(self, sid: str, ttl: int, user: str, env: dict[str, str]) -> SandboxInfo:
        self._rec("resume", sid, ttl, user, env)
        return INFO

    async def ping(self, sid: str) -> None:
        self._rec("ping", sid)

    async def list_sandboxes(self) -> list[SandboxInfo]:
        return [INFO]

    def drain_auto_paused(self) -> list[str]:
        return ["cl-p"]

    async def shutdown(self) -> None:
        self._rec("shutdown")

    async def exec(self, *args: Any) -> ExecResult:
        self._rec("exec", *args)
        return ExecResult(b"o", b"e", 7)

    async def exec_stream(self, *args: Any) -> AsyncIterator[ExecEvent]:
        self._rec("exec_stream", *args)
        for ev in (ExecEvent("start", pid=5), ExecEvent("stderr", data=b"x"), ExecEvent("end", exit_code=1)):
            yield ev
        yield ExecEvent("stdout", data=b"never sent: the stream ends after end")

    async def start_background(self, *args: Any) -> int:
        self._rec("start_background", *args)
        return 99

    async def list_processes(self, sid: str) -> list[ProcessInfo]:
        return [ProcessInfo(1, "t", "sleep", ["1"])]

    async def kill_process(self, *args: Any) -> None:
        self._rec("kill_process", *args)

    async def connect_process(self, *args: Any) -> AsyncIterator[ExecEvent]:
        self._rec("connect_process", *args)
        yield ExecEvent("stdout", data=b"y")
        yield ExecEvent("end", exit_code=0, error="cut")

    async def write_file(self, *args: Any) -> None:
        self._rec("write_file", *args)

    async def read_file(self, sid: str, path: str) -> bytes:
        return b"content"

    async def write_file_stream(self, sid: str, path: str, chunks: AsyncIterator[bytes]) -> None:
        self._rec("write_file_stream", sid, path, [c async for c in chunks])

    async def read_file_stream(self, sid: str, path: str) -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cd"

    async def list_dir(self, *args: Any) -> list[FileInfo]:
        self._rec("list_dir", *args)
        return [FILE]

    async def make_dir(self, sid: str, path: str) -> FileInfo:
        return FILE

    async def remove_path(self, *args: Any) -> None:
        self._rec("remove_path", *args)

    async def pty_attach(self, *args: Any) -> AsyncIterator[PtyEvent]:
        self._rec("pty_attach", *args)
        yield PtyEvent("started", pid=3, tag="pty-1")
        yield PtyEvent("output", data=b"$ ")
        yield PtyEvent("exited", exit_code=0)

    async def pty_input(self, *args: Any) -> None:
        self._rec("pty_input", *args)

    async def pty_resize(self, *args: Any) -> None:
        self._rec("pty_resize", *args)

    async def pty_kill(self, *args: Any) -> None:
        self._rec("pty_kill", *args)

    async def create_snapshot(self, *args: Any) -> int:
        self._rec("create_snapshot", *args)
        return 1234

    async def flatten_rootfs(self, *args: Any) -> int:
        self._rec("flatten_rootfs", *args)
        return 5678

    async def delete_snapshot(self, *args: Any) -> None:
        self._rec("delete_snapshot", *args)

    async def template_size(self, *args: Any) -> int:
        return 42

    async def get_metrics(self, *args: Any) -> list[MetricSample]:
        self._rec("get_metrics", *args)
        return [SAMPLE]

    async def flush_metrics(self, sid: str) -> FlushedMetrics:
        return FlushedMetrics([SAMPLE], [], [SAMPLE, SAMPLE])

    def proxy_target(self, sid: str, port: int) -> tuple[str, int]:
        raise LookupError


@pytest.fixture(scope="module")
def rt() -> RecordingRuntime:
    return RecordingRuntime()


@pytest.fixture(scope="module")
def setup(rt: RecordingRuntime) -> Iterator[tuple[AgentThread, tls.ClientCertHolder]]:
    ca = tls.generate_ca()
    host = tls.issue_host_cert(ca, "host-rpc", "127.0.0.1:1")
    ctx = tls.server_ssl_context(host.cert_pem, host.key_pem, ca.cert_pem)
    thread = AgentThread(build_agent_app(rt), ctx).start()  # type: ignore[arg-type]
    yield thread, tls.ClientCertHolder(ca)
    thread.stop()


@pytest.fixture
async def c(setup: tuple[AgentThread, tls.ClientCertHolder]) -> AsyncIterator[AgentClient]:
    client = AgentClient(setup[0].address, setup[1])
    yield client
    await client.aclose()


def last(rt: RecordingRuntime, name: str) -> tuple[Any, ...]:
    return next(args for n, args in reversed(rt.calls) if n == name)


def test_every_rpc_has_a_client_method() -> None:
    import re

    for name in METHODS:
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
        assert callable(getattr(AgentClient, snake)), snake


async def test_lifecycle(c: AgentClient, rt: RecordingRuntime) -> None:
    res = await c.create_sandbox(
        pb.CreateSandboxRequest(
            sandbox_id="cl-a", template="base", vcpus=2, memory_mb=1024, timeout_sec=30,
            team_id=TEAM.upper(), template_id="", default_user="u", default_env={"A": "1"},
        )
    )  # fmt: skip
    spec = last(rt, "create")[0]
    assert (spec.sandbox_id, spec.team_id, spec.template_id, spec.timeout_sec) == ("cl-a", TEAM, ZERO, 60)
    assert (spec.default_user, spec.default_env, spec.template_name) == ("u", {"A": "1"}, "base")
    assert (res.host_ip, res.status, dict(res.metadata), res.disk_size_mb) == ("10.0.0.2", "running", {"k": "v"}, 6000)
    await c.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id="cl-a"))
    await c.pause_sandbox(pb.PauseSandboxRequest(sandbox_id="cl-a"))
    resumed = await c.resume_sandbox(
        pb.ResumeSandboxRequest(sandbox_id="cl-a", timeout_sec=9, default_user="u", default_env={"B": "2"})
    )
    assert last(rt, "resume") == ("cl-a", 9, "u", {"B": "2"}) and resumed.host_ip == "10.0.0.2"
    await c.ping_sandbox(pb.PingSandboxRequest(sandbox_id="cl-a"))
    assert last(rt, "destroy") == last(rt, "pause") == last(rt, "ping") == ("cl-a",)
    listed = await c.list_sandboxes()
    s = listed.sandboxes[0]
    assert (s.created_at_unix, s.last_active_at_unix, s.team_id, s.timeout_sec) == (100, 200, TEAM, 300)
    assert list(listed.auto_paused_sandbox_ids) == ["cl-p"]


async def test_exec_and_processes(c: AgentClient, rt: RecordingRuntime) -> None:
    res = await c.exec(pb.ExecRequest(sandbox_id="cl-a", cmd="/bin/sh", args=["-c", "x"], envs={"E": "1"}, cwd="/w"))
    assert last(rt, "exec") == ("cl-a", "/bin/sh", ["-c", "x"], 30, {"E": "1"}, "/w")  # default timeout 30
    assert (res.stdout, res.stderr, res.exit_code) == (b"o", b"e", 7)
    events = [e async for e in c.exec_stream(pb.ExecStreamRequest(sandbox_id="cl-a", cmd="ls"))]
    assert [e.WhichOneof("event") for e in events] == ["start", "data", "end"]
    assert events[1].data.WhichOneof("output") == "stderr" and events[2].end.exit_code == 1
    bg = await c.start_background(pb.StartBackgroundRequest(sandbox_id="cl-a", cmd="sleep", tag="proc-1"))
    assert (bg.pid, bg.tag) == (99, "proc-1")
    procs = await c.list_processes(pb.ListProcessesRequest(sandbox_id="cl-a"))
    assert procs.processes[0].args == ["1"]
    await c.kill_process(pb.KillProcessRequest(sandbox_id="cl-a", pid=0))
    assert last(rt, "kill_process") == ("cl-a", 0, None, "SIGKILL")
    await c.kill_process(pb.KillProcessRequest(sandbox_id="cl-a", tag="t", signal="SIGTERM"))
    assert last(rt, "kill_process") == ("cl-a", None, "t", "SIGTERM")
    for bad in (
        pb.KillProcessRequest(sandbox_id="cl-a"),
        pb.KillProcessRequest(sandbox_id="cl-a", pid=1, signal="HUP"),
    ):
        with pytest.raises(AgentError) as exc:
            await c.kill_process(bad)
        assert exc.value.code == "invalid_argument"
    got = [e async for e in c.connect_process(pb.ConnectProcessRequest(sandbox_id="cl-a", tag="t"))]
    assert last(rt, "connect_process") == ("cl-a", None, "t") and got[-1].end.error == "cut"
    with pytest.raises(AgentError) as exc:
        async for _ in c.connect_process(pb.ConnectProcessRequest(sandbox_id="cl-a")):
            pass
    assert exc.value.code == "invalid_argument"


async def test_files(c: AgentClient, rt: RecordingRuntime) -> None:
    await c.write_file(pb.WriteFileRequest(sandbox_id="cl-a", path="/f", content=b"\x00\xff"))
    assert last(rt, "write_file") == ("cl-a", "/f", b"\x00\xff")
    assert (await c.read_file(pb.ReadFileRequest(sandbox_id="cl-a", path="/f"))).content == b"content"
    listed = await c.list_dir(pb.ListDirRequest(sandbox_id="cl-a", path="/d"))
    assert last(rt, "list_dir") == ("cl-a", "/d", 1)
    entry = listed.entries[0]
    assert entry.HasField("symlink_target") and entry.symlink_target == "/target" and entry.mode == 0o777
    made = await c.make_dir(pb.MakeDirRequest(sandbox_id="cl-a", path="/d"))
    assert made.entry.type == "symlink"
    await c.remove_path(pb.RemovePathRequest(sandbox_id="cl-a", path="/d"))
    chunks = [m.chunk async for m in c.read_file_stream(pb.ReadFileStreamRequest(sandbox_id="cl-a", path="/f"))]
    assert chunks == [b"ab", b"cd"]

    async def up() -> AsyncIterator[pb.WriteFileStreamRequest]:
        yield pb.WriteFileStreamRequest(meta=pb.WriteFileStreamMeta(sandbox_id="cl-a", path="/u"))
        for part in (b"1", b"", b"2"):
            yield pb.WriteFileStreamRequest(chunk=part)

    await c.write_file_stream(up())
    assert last(rt, "write_file_stream") == ("cl-a", "/u", [b"1", b"2"])  # empty chunks dropped


async def test_pty(c: AgentClient, rt: RecordingRuntime) -> None:
    req = pb.PtyAttachRequest(sandbox_id="cl-a", tag="pty-1", cmd="/bin/bash", envs={"T": "x"}, user="root")
    events = [e async for e in c.pty_attach(req)]
    assert [e.WhichOneof("event") for e in events] == ["started", "output", "exited"]
    assert events[0].started.tag == "pty-1" and events[1].output.data == b"$ "
    assert last(rt, "pty_attach") == ("cl-a", "pty-1", "/bin/bash", [], 80, 24, {"T": "x"}, "", "root")
    await c.pty_send_input(pb.PtySendInputRequest(sandbox_id="cl-a", tag="pty-1", data=b"ls\n"))
    await c.pty_resize(pb.PtyResizeRequest(sandbox_id="cl-a", tag="pty-1", cols=100, rows=40))
    await c.pty_kill(pb.PtyKillRequest(sandbox_id="cl-a", tag="pty-1"))
    assert last(rt, "pty_input") == ("cl-a", "pty-1", b"ls\n")
    assert last(rt, "pty_resize") == ("cl-a", "pty-1", 100, 40)
    assert last(rt, "pty_kill") == ("cl-a", "pty-1")


async def test_snapshots_templates_metrics(c: AgentClient, rt: RecordingRuntime) -> None:
    snap = await c.create_snapshot(pb.CreateSnapshotRequest(sandbox_id="cl-a", name="n", team_id=TEAM, template_id=TPL))
    assert snap.size_bytes == 1234 and last(rt, "create_snapshot") == ("cl-a", TEAM, TPL, "n")
    flat = await c.flatten_rootfs(pb.FlattenRootfsRequest(sandbox_id="cl-a", team_id=TEAM, template_id=TPL))
    assert flat.size_bytes == 5678
    await c.delete_snapshot(pb.DeleteSnapshotRequest(team_id="", template_id=TPL))
    assert last(rt, "delete_snapshot") == (ZERO, TPL)
    assert (await c.get_template_size(pb.GetTemplateSizeRequest())).size_bytes == 42
    with pytest.raises(AgentError) as exc:
        await c.create_snapshot(pb.CreateSnapshotRequest(sandbox_id="cl-a", template_id="nope"))
    assert exc.value.code == "invalid_argument"
    pts = await c.get_sandbox_metrics(pb.GetSandboxMetricsRequest(sandbox_id="cl-a", range="10m"))
    assert pts.points[0].cpu_pct == 12.5 and last(rt, "get_metrics") == ("cl-a", "10m")
    with pytest.raises(AgentError) as exc:
        await c.get_sandbox_metrics(pb.GetSandboxMetricsRequest(sandbox_id="cl-a", range="3m"))
    assert exc.value.code == "invalid_argument"
    flushed = await c.flush_sandbox_metrics(pb.FlushSandboxMetricsRequest(sandbox_id="cl-a"))
    assert (len(flushed.points_10m), len(flushed.points_2h), len(flushed.points_24h)) == (1, 0, 2)


async def test_terminate_runs_shutdown(c: AgentClient, rt: RecordingRuntime) -> None:
    import asyncio

    await c.terminate()
    for _ in range(100):
        if any(n == "shutdown" for n, _ in rt.calls):
            break
        await asyncio.sleep(0.01)
    assert any(n == "shutdown" for n, _ in rt.calls)
