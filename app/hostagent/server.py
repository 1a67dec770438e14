"""The agent side of hostagent.v1: RPC handlers over a ``Runtime``, the ASGI app, and the mTLS server.

Each handler translates a request message into one ``Runtime`` call and the result back into the
response message. ``RuntimeErr`` subclasses carry their Connect code (``err.code``); the Connect layer
(``connect.py``) turns them into error responses / end-of-stream errors. Request validation that the
wire spec assigns to the agent (UUIDs, metric ranges, kill selectors and signals, the first message of
WriteFileStream) happens here, so every runtime gets it for free.

Serving: uvicorn (httptools, HTTP/1.1 only) with an ``ssl.SSLContext`` from ``tls.ServerTLS``;
``AgentConfig`` injects that context in ``load()`` because uvicorn otherwise builds its own from files.
The context requires TLS 1.3 and a client certificate chained to the CA, and its certificate is
hot-swapped by ``ServerTLS.update`` after a refresh.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvicorn
from uvicorn.config import WS_PROTOCOLS

from app.hostagent.connect import ConnectApp, ConnectError, RequestContext, service_methods
from app.hostagent.portproxy import PortProxy
from app.hostagent.proto import hostagent_pb2 as pb
from app.hostagent.runtime.base import (
    CreateSpec,
    ExecEvent,
    FileInfo,
    MetricSample,
    PtyEvent,
    Runtime,
    SandboxInfo,
)

log = logging.getLogger(__name__)

SERVICE = "hostagent.v1.HostAgentService"
METHODS = service_methods(pb, "HostAgentService")
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
METRIC_RANGES = frozenset({"5m", "10m", "1h", "2h", "6h", "12h", "24h"})
KILL_SIGNALS = frozenset({"SIGTERM", "SIGKILL"})
DEFAULT_EXEC_TIMEOUT = 30
STREAM_CHUNK = 64 * 1024
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


# ---------------------------------------------------------------- conversions


def _uuid(value: str, what: str) -> str:
    """Canonical UUID string; empty means the all-zero UUID; malformed → invalid_argument."""
    if not value:
        return ZERO_UUID
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise ConnectError("invalid_argument", f"invalid {what}: {value!r}") from exc


def _new_sandbox_id() -> str:
    n, body = secrets.randbits(128), ""
    for _ in range(25):
        n, r = divmod(n, 36)
        body = _B36[r] + body
    return "cl-" + body


def _selector(req: pb.KillProcessRequest | pb.ConnectProcessRequest) -> tuple[int | None, str | None]:
    which = req.WhichOneof("selector")
    if which == "pid":
        return req.pid, None
    if which == "tag":
        return None, req.tag
    raise ConnectError("invalid_argument", "process selector (pid or tag) is required")


def _sandbox_info(s: SandboxInfo) -> pb.SandboxInfo:
    return pb.SandboxInfo(
        sandbox_id=s.sandbox_id,
        status=s.status,
        vcpus=s.vcpus,
        memory_mb=s.memory_mb,
        host_ip=s.host_ip,
        created_at_unix=s.created_at_unix,
        last_active_at_unix=s.last_active_at_unix,
        timeout_sec=s.timeout_sec,
        team_id=s.team_id,
        template_id=s.template_id,
        metadata=s.metadata,
    )


def _file_entry(f: FileInfo) -> pb.FileEntry:
    entry = pb.FileEntry(
        name=f.name,
        path=f.path,
        type=f.type,
        size=f.size,
        mode=f.mode,
        permissions=f.permissions,
        owner=f.owner,
        group=f.group,
        modified_at=f.modified_at,
    )
    if f.symlink_target is not None:
        entry.symlink_target = f.symlink_target
    return entry


def _points(samples: list[MetricSample]) -> list[pb.MetricPoint]:
    return [
        pb.MetricPoint(
            timestamp_unix=m.timestamp_unix, cpu_pct=m.cpu_pct, mem_bytes=m.mem_bytes, disk_bytes=m.disk_bytes
        )
        for m in samples
    ]


def _exec_event(ev: ExecEvent) -> dict[str, Any]:
    """Keyword arguments for ExecStreamResponse / ConnectProcessResponse (same oneof layout)."""
    if ev.kind == "start":
        return {"start": pb.ExecStreamStart(pid=ev.pid)}
    if ev.kind == "stdout":
        return {"data": pb.ExecStreamData(stdout=ev.data)}
    if ev.kind == "stderr":
        return {"data": pb.ExecStreamData(stderr=ev.data)}
    if ev.kind == "end":
        return {"end": pb.ExecStreamEnd(exit_code=ev.exit_code, error=ev.error)}
    raise ConnectError("internal", f"unknown exec event {ev.kind!r}")


def _pty_event(ev: PtyEvent) -> pb.PtyAttachResponse:
    if ev.kind == "started":
        return pb.PtyAttachResponse(started=pb.PtyStarted(pid=ev.pid, tag=ev.tag))
    if ev.kind == "output":
        return pb.PtyAttachResponse(output=pb.PtyOutput(data=ev.data))
    if ev.kind == "exited":
        return pb.PtyAttachResponse(exited=pb.PtyExited(exit_code=ev.exit_code, error=ev.error))
    raise ConnectError("internal", f"unknown pty event {ev.kind!r}")


# ---------------------------------------------------------------- the service


class AgentService:
    """hostagent.v1.HostAgentService handlers. Method names match the RPC names."""

    def __init__(self, runtime: Runtime, on_terminate: Callable[[], Awaitable[None]] | None = None) -> None:
        self.rt = runtime
        self.on_terminate = on_terminate

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {name: getattr(self, name) for name in METHODS}

    # lifecycle -------------------------------------------------------------

    async def CreateSandbox(self, req: pb.CreateSandboxRequest, ctx: RequestContext) -> pb.CreateSandboxResponse:
        timeout = req.timeout_sec
        if 0 < timeout < 60:
            timeout = 60  # the agent clamps 1–59 s to one minute
        spec = CreateSpec(
            sandbox_id=req.sandbox_id or _new_sandbox_id(),
            team_id=_uuid(req.team_id, "team_id"),
            template_id=_uuid(req.template_id, "template_id"),
            vcpus=req.vcpus or 1,
            memory_mb=req.memory_mb or 512,
            disk_size_mb=req.disk_size_mb or 5120,
            timeout_sec=max(timeout, 0),
            default_user=req.default_user,
            default_env=dict(req.default_env),
            template_name=req.template,
        )
        info = await self.rt.create(spec)
        return pb.CreateSandboxResponse(
            sandbox_id=info.sandbox_id,
            status=info.status,
            host_ip=info.host_ip,
            metadata=info.metadata,
            disk_size_mb=info.disk_size_mb,
        )

    async def DestroySandbox(self, req: pb.DestroySandboxRequest, ctx: RequestContext) -> pb.DestroySandboxResponse:
        await self.rt.destroy(req.sandbox_id)
        return pb.DestroySandboxResponse()

    async def PauseSandbox(self, req: pb.PauseSandboxRequest, ctx: RequestContext) -> pb.PauseSandboxResponse:
        await self.rt.pause(req.sandbox_id)
        return pb.PauseSandboxResponse()

    async def ResumeSandbox(self, req: pb.ResumeSandboxRequest, ctx: RequestContext) -> pb.ResumeSandboxResponse:
        info = await self.rt.resume(req.sandbox_id, req.timeout_sec, req.default_user, dict(req.default_env))
        return pb.ResumeSandboxResponse(
            sandbox_id=info.sandbox_id, status=info.status, host_ip=info.host_ip, metadata=info.metadata
        )

    async def PingSandbox(self, req: pb.PingSandboxRequest, ctx: RequestContext) -> pb.PingSandboxResponse:
        await self.rt.ping(req.sandbox_id)
        return pb.PingSandboxResponse()

    async def ListSandboxes(self, req: pb.ListSandboxesRequest, ctx: RequestContext) -> pb.ListSandboxesResponse:
        infos = await self.rt.list_sandboxes()
        return pb.ListSandboxesResponse(
            sandboxes=[_sandbox_info(s) for s in infos],
            auto_paused_sandbox_ids=self.rt.drain_auto_paused(),
        )

    async def Terminate(self, req: pb.TerminateRequest, ctx: RequestContext) -> pb.TerminateResponse:
        ctx.after_response.append(self._terminate)
        return pb.TerminateResponse()

    async def _terminate(self) -> None:
        """After the Terminate answer is on the wire: destroy everything, then let the agent exit."""
        try:
            await self.rt.shutdown()
        except Exception:
            log.exception("runtime shutdown during Terminate failed")
        if self.on_terminate is not None:
            await self.on_terminate()

    # exec and processes -----------------------------------------------------

    async def Exec(self, req: pb.ExecRequest, ctx: RequestContext) -> pb.ExecResponse:
        timeout = req.timeout_sec if req.timeout_sec > 0 else DEFAULT_EXEC_TIMEOUT
        res = await self.rt.exec(req.sandbox_id, req.cmd, list(req.args), timeout, dict(req.envs), req.cwd)
        return pb.ExecResponse(stdout=res.stdout, stderr=res.stderr, exit_code=res.exit_code)

    async def ExecStream(self, req: pb.ExecStreamRequest, ctx: RequestContext) -> AsyncIterator[pb.ExecStreamResponse]:
        events = self.rt.exec_stream(req.sandbox_id, req.cmd, list(req.args), max(req.timeout_sec, 0))
        async for ev in events:
            yield pb.ExecStreamResponse(**_exec_event(ev))
            if ev.kind == "end":
                return

    async def StartBackground(self, req: pb.StartBackgroundRequest, ctx: RequestContext) -> pb.StartBackgroundResponse:
        pid = await self.rt.start_background(req.sandbox_id, req.cmd, list(req.args), req.tag, dict(req.envs), req.cwd)
        return pb.StartBackgroundResponse(pid=pid, tag=req.tag)

    async def ListProcesses(self, req: pb.ListProcessesRequest, ctx: RequestContext) -> pb.ListProcessesResponse:
        procs = await self.rt.list_processes(req.sandbox_id)
        return pb.ListProcessesResponse(
            processes=[pb.ProcessEntry(pid=p.pid, tag=p.tag, cmd=p.cmd, args=p.args) for p in procs]
        )

    async def KillProcess(self, req: pb.KillProcessRequest, ctx: RequestContext) -> pb.KillProcessResponse:
        pid, tag = _selector(req)
        signal = req.signal or "SIGKILL"
        if signal not in KILL_SIGNALS:
            raise ConnectError("invalid_argument", f"unsupported signal {req.signal!r}")
        await self.rt.kill_process(req.sandbox_id, pid, tag, signal)
        return pb.KillProcessResponse()

    async def ConnectProcess(
        self, req: pb.ConnectProcessRequest, ctx: RequestContext
    ) -> AsyncIterator[pb.ConnectProcessResponse]:
        pid, tag = _selector(req)
        async for ev in self.rt.connect_process(req.sandbox_id, pid, tag):
            yield pb.ConnectProcessResponse(**_exec_event(ev))
            if ev.kind == "end":
                return

    # files -------------------------------------------------------------------

    async def WriteFile(self, req: pb.WriteFileRequest, ctx: RequestContext) -> pb.WriteFileResponse:
        await self.rt.write_file(req.sandbox_id, req.path, req.content)
        return pb.WriteFileResponse()

    async def ReadFile(self, req: pb.ReadFileRequest, ctx: RequestContext) -> pb.ReadFileResponse:
        return pb.ReadFileResponse(content=await self.rt.read_file(req.sandbox_id, req.path))

    async def ListDir(self, req: pb.ListDirRequest, ctx: RequestContext) -> pb.ListDirResponse:
        entries = await self.rt.list_dir(req.sandbox_id, req.path, req.depth or 1)
        return pb.ListDirResponse(entries=[_file_entry(f) for f in entries])

    async def MakeDir(self, req: pb.MakeDirRequest, ctx: RequestContext) -> pb.MakeDirResponse:
        return pb.MakeDirResponse(entry=_file_entry(await self.rt.make_dir(req.sandbox_id, req.path)))

    async def RemovePath(self, req: pb.RemovePathRequest, ctx: RequestContext) -> pb.RemovePathResponse:
        await self.rt.remove_path(req.sandbox_id, req.path)
        return pb.RemovePathResponse()

    async def WriteFileStream(
        self, requests: AsyncIterator[pb.WriteFileStreamRequest], ctx: RequestContext
    ) -> pb.WriteFileStreamResponse:
        first = await anext(requests, None)
        if first is None:
            raise ConnectError("invalid_argument", "empty WriteFileStream")
        if first.WhichOneof("content") != "meta":
            raise ConnectError("invalid_argument", "the first WriteFileStream message must be meta")

        async def chunks() -> AsyncIterator[bytes]:
            async for msg in requests:
                if msg.WhichOneof("content") == "meta":
                    raise ConnectError("invalid_argument", "meta is only allowed as the first message")
                if msg.chunk:
                    yield msg.chunk

        await self.rt.write_file_stream(first.meta.sandbox_id, first.meta.path, chunks())
        return pb.WriteFileStreamResponse()

    async def ReadFileStream(
        self, req: pb.ReadFileStreamRequest, ctx: RequestContext
    ) -> AsyncIterator[pb.ReadFileStreamResponse]:
        async for data in self.rt.read_file_stream(req.sandbox_id, req.path):
            for off in range(0, len(data), STREAM_CHUNK):  # at most 64 KiB per message
                yield pb.ReadFileStreamResponse(chunk=data[off : off + STREAM_CHUNK])

    # PTY ---------------------------------------------------------------------

    async def PtyAttach(self, req: pb.PtyAttachRequest, ctx: RequestContext) -> AsyncIterator[pb.PtyAttachResponse]:
        events = self.rt.pty_attach(
            req.sandbox_id,
            req.tag,
            req.cmd,
            list(req.args),
            req.cols or 80,
            req.rows or 24,
            dict(req.envs),
            req.cwd,
            req.user,
        )
        async for ev in events:
            yield _pty_event(ev)
            if ev.kind == "exited":
                return

    async def PtySendInput(self, req: pb.PtySendInputRequest, ctx: RequestContext) -> pb.PtySendInputResponse:
        await self.rt.pty_input(req.sandbox_id, req.tag, req.data)
        return pb.PtySendInputResponse()

    async def PtyResize(self, req: pb.PtyResizeRequest, ctx: RequestContext) -> pb.PtyResizeResponse:
        await self.rt.pty_resize(req.sandbox_id, req.tag, req.cols, req.rows)
        return pb.PtyResizeResponse()

    async def PtyKill(self, req: pb.PtyKillRequest, ctx: RequestContext) -> pb.PtyKillResponse:
        await self.rt.pty_kill(req.sandbox_id, req.tag)
        return pb.PtyKillResponse()

    # snapshots and templates ---------------------------------------------------

    async def CreateSnapshot(self, req: pb.CreateSnapshotRequest, ctx: RequestContext) -> pb.CreateSnapshotResponse:
        team, template = _uuid(req.team_id, "team_id"), _uuid(req.template_id, "template_id")
        size = await self.rt.create_snapshot(req.sandbox_id, team, template, req.name)
        return pb.CreateSnapshotResponse(size_bytes=size)

    async def FlattenRootfs(self, req: pb.FlattenRootfsRequest, ctx: RequestContext) -> pb.FlattenRootfsResponse:
        team, template = _uuid(req.team_id, "team_id"), _uuid(req.template_id, "template_id")
        size = await self.rt.flatten_rootfs(req.sandbox_id, team, template, req.name)
        return pb.FlattenRootfsResponse(size_bytes=size)

    async def DeleteSnapshot(self, req: pb.DeleteSnapshotRequest, ctx: RequestContext) -> pb.DeleteSnapshotResponse:
        await self.rt.delete_snapshot(_uuid(req.team_id, "team_id"), _uuid(req.template_id, "template_id"))
        return pb.DeleteSnapshotResponse()

    async def GetTemplateSize(self, req: pb.GetTemplateSizeRequest, ctx: RequestContext) -> pb.GetTemplateSizeResponse:
        size = await self.rt.template_size(_uuid(req.team_id, "team_id"), _uuid(req.template_id, "template_id"))
        return pb.GetTemplateSizeResponse(size_bytes=size)

    # metrics -------------------------------------------------------------------

    async def GetSandboxMetrics(
        self, req: pb.GetSandboxMetricsRequest, ctx: RequestContext
    ) -> pb.GetSandboxMetricsResponse:
        if req.range not in METRIC_RANGES:
            raise ConnectError("invalid_argument", f"invalid range {req.range!r}")
        return pb.GetSandboxMetricsResponse(points=_points(await self.rt.get_metrics(req.sandbox_id, req.range)))

    async def FlushSandboxMetrics(
        self, req: pb.FlushSandboxMetricsRequest, ctx: RequestContext
    ) -> pb.FlushSandboxMetricsResponse:
        flushed = await self.rt.flush_metrics(req.sandbox_id)
        return pb.FlushSandboxMetricsResponse(
            points_10m=_points(flushed.points_10m),
            points_2h=_points(flushed.points_2h),
            points_24h=_points(flushed.points_24h),
        )


# ---------------------------------------------------------------- app and serving


def build_agent_app(runtime: Runtime, on_terminate: Callable[[], Awaitable[None]] | None = None) -> ConnectApp:
    """ASGI app: ``/hostagent.v1.HostAgentService/*`` → RPC handlers, ``/proxy/*`` → port proxy, else 404."""
    service = AgentService(runtime, on_terminate)
    proxy = PortProxy(runtime.proxy_target)

    async def other(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("path", "").startswith("/proxy/"):
            return await proxy(scope, receive, send)
        if scope["type"] == "http":
            body = b"404 page not found\n"
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"19")],
                }
            )
            await send({"type": "http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008})

    return ConnectApp(SERVICE, METHODS, service.handlers(), fallback=other)


class AgentConfig(uvicorn.Config):
    """uvicorn Config that serves a ready ``ssl.SSLContext`` (uvicorn would otherwise load files)."""

    def __init__(self, app: Any, ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._ssl_context = ssl_context

    def load(self) -> None:
        super().load()
        self.ssl = self._ssl_context


def agent_server(
    app: Any,
    ssl_context: ssl.SSLContext,
    host: str = "0.0.0.0",
    port: int = 50051,
    log_level: str = "warning",
) -> uvicorn.Server:
    """A uvicorn Server for the agent: HTTP/1.1 (httptools), mTLS, spec timeouts (§2.4)."""
    config = AgentConfig(
        app,
        ssl_context,
        host=host,
        port=port,
        http="httptools",
        ws="websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "auto",
        lifespan="off",
        timeout_keep_alive=620,  # the reference agent's idle timeout
        log_level=log_level,
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )
    return uvicorn.Server(config)


async def serve_agent(
    app: Any,
    ssl_context: ssl.SSLContext,
    host: str = "0.0.0.0",
    port: int = 50051,
    sock: socket.socket | None = None,
    log_level: str = "warning",
) -> None:
    """Serve until cancelled (or ``server.should_exit``). Pass ``tls.ServerTLS(...).context`` for hot swap."""
    server = agent_server(app, ssl_context, host, port, log_level)
    try:
        await server.serve(sockets=[sock] if sock is not None else None)
    except asyncio.CancelledError:
        server.should_exit = True
        raise


class AgentThread:
    """Run an agent app under uvicorn in a background thread (tests, embedded setups).

    Binds ``host:port`` (0 = any free port) before starting, so ``port`` is known at once.
    """

    def __init__(self, app: Any, ssl_context: ssl.SSLContext, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = agent_server(app, ssl_context, host, self.port)
        self._thread = threading.Thread(target=self._run, name=f"agent-{self.port}", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self, timeout: float = 10.0) -> AgentThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("agent server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self.sock.close()
