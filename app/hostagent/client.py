"""The control plane's client for host agents (hostagent.v1 over Connect, HTTP/1.1, mTLS).

* ``AgentClient``: one typed async method per RPC. Unary → the response message; server-streaming →
  an async iterator of messages (read incrementally; breaking out of the loop closes the stream);
  client-streaming → takes an async iterator of request messages.
* ``AgentError(code, message)``: every failure, including transport ones (``unavailable`` /
  ``deadline_exceeded``).
* ``AgentPool``: one client (one keep-alive pool) per host ID.
* ``proxy_request`` / ``proxy_websocket``: the CP's per-capsule port proxy reaches
  ``https://<address>/proxy/{sandbox_id}/{port}/...`` over the same mTLS.

The TLS context comes from a provider (``tls.ClientCertHolder``); when it returns a new context (the
CP certificate was renewed) the client starts a new connection pool, and the old one is closed once
its in-flight calls finish.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any

import httpx
import websockets
from google.protobuf.message import Message
from websockets.asyncio.client import ClientConnection

from app.hostagent.connect import CONNECT_TIMEOUT, ConnectClient, ConnectError, base_url
from app.hostagent.proto import hostagent_pb2 as pb

SERVICE = "hostagent.v1.HostAgentService"
SSLProvider = Callable[[], ssl.SSLContext]
POOL_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=20, keepalive_expiry=90)


class AgentError(ConnectError):
    """An RPC to a host agent failed; ``code`` is the Connect code (``not_found``, ``unavailable``…)."""


class _Pool:
    """An httpx client bound to one SSL context, with a count of calls in flight."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.http = httpx.AsyncClient(
            http1=True,
            http2=False,
            verify=ctx,
            trust_env=False,
            follow_redirects=False,
            limits=POOL_LIMITS,
            timeout=httpx.Timeout(connect=CONNECT_TIMEOUT, read=None, write=None, pool=None),
        )
        self.active = 0
        self.retired = False

    async def maybe_close(self) -> None:
        if self.retired and self.active == 0:
            await self.http.aclose()


class AgentClient:
    """Typed hostagent.v1 client for one agent address."""

    def __init__(self, address: str, ssl_context_provider: SSLProvider) -> None:
        self.address = address
        self.url = base_url(address)
        self._provider = ssl_context_provider
        self._pool: _Pool | None = None
        self._old: list[_Pool] = []

    # connection management ----------------------------------------------------

    def _current(self) -> _Pool:
        ctx = self._provider()
        if self._pool is None or self._pool.ctx is not ctx:
            if self._pool is not None:
                self._retire(self._pool)
            self._pool = _Pool(ctx)
        return self._pool

    def _retire(self, pool: _Pool) -> None:
        """Stop using ``pool`` for new calls; close it now if idle, else when its last call ends."""
        pool.retired = True
        if pool.active:
            self._old.append(pool)
        else:
            _spawn(pool.http.aclose())

    async def _release(self, pool: _Pool) -> None:
        pool.active -= 1
        if pool.retired and pool.active == 0:
            self._old = [p for p in self._old if p is not pool]
            await pool.maybe_close()

    async def aclose(self) -> None:
        pools = [*self._old, *([self._pool] if self._pool else [])]
        self._pool, self._old = None, []
        for p in pools:
            await p.http.aclose()

    # generic calls ------------------------------------------------------------------

    async def unary(
        self, method: str, request: Message, response_cls: type[Any], timeout_s: float | None = None
    ) -> Any:
        pool = self._current()
        pool.active += 1
        try:
            rpc = ConnectClient(pool.http, self.url, SERVICE, AgentError)
            return await rpc.unary(method, request, response_cls, timeout_s)
        finally:
            await self._release(pool)

    async def server_stream(
        self, method: str, request: Message, response_cls: type[Any], timeout_s: float | None = None
    ) -> AsyncIterator[Any]:
        pool = self._current()
        pool.active += 1
        try:
            rpc = ConnectClient(pool.http, self.url, SERVICE, AgentError)
            async for msg in rpc.server_stream(method, request, response_cls, timeout_s):
                yield msg
        finally:
            await self._release(pool)

    async def client_stream(
        self,
        method: str,
        requests: AsyncIterator[Message],
        response_cls: type[Any],
        timeout_s: float | None = None,
    ) -> Any:
        pool = self._current()
        pool.active += 1
        try:
            rpc = ConnectClient(pool.http, self.url, SERVICE, AgentError)
            return await rpc.client_stream(method, requests, response_cls, timeout_s)
        finally:
            await self._release(pool)

    # lifecycle ------------------------------------------------------------------------

    async def create_sandbox(
        self, req: pb.CreateSandboxRequest, timeout_s: float | None = None
    ) -> pb.CreateSandboxResponse:
        return await self.unary("CreateSandbox", req, pb.CreateSandboxResponse, timeout_s)

    async def destroy_sandbox(
        self, req: pb.DestroySandboxRequest, timeout_s: float | None = None
    ) -> pb.DestroySandboxResponse:
        return await self.unary("DestroySandbox", req, pb.DestroySandboxResponse, timeout_s)

    async def pause_sandbox(
        self, req: pb.PauseSandboxRequest, timeout_s: float | None = None
    ) -> pb.PauseSandboxResponse:
        return await self.unary("PauseSandbox", req, pb.PauseSandboxResponse, timeout_s)

    async def resume_sandbox(
        self, req: pb.ResumeSandboxRequest, timeout_s: float | None = None
    ) -> pb.ResumeSandboxResponse:
        return await self.unary("ResumeSandbox", req, pb.ResumeSandboxResponse, timeout_s)

    async def ping_sandbox(self, req: pb.PingSandboxRequest, timeout_s: float | None = None) -> pb.PingSandboxResponse:
        return await self.unary("PingSandbox", req, pb.PingSandboxResponse, timeout_s)

    async def list_sandboxes(
        self, req: pb.ListSandboxesRequest | None = None, timeout_s: float | None = None
    ) -> pb.ListSandboxesResponse:
        return await self.unary("ListSandboxes", req or pb.ListSandboxesRequest(), pb.ListSandboxesResponse, timeout_s)

    async def terminate(
        self, req: pb.TerminateRequest | None = None, timeout_s: float | None = None
    ) -> pb.TerminateResponse:
        return await self.unary("Terminate", req or pb.TerminateRequest(), pb.TerminateResponse, timeout_s)

    # exec and processes -----------------------------------------------------------------

    async def exec(self, req: pb.ExecRequest, timeout_s: float | None = None) -> pb.ExecResponse:
        return await self.unary("Exec", req, pb.ExecResponse, timeout_s)

    def exec_stream(
        self, req: pb.ExecStreamRequest, timeout_s: float | None = None
    ) -> AsyncIterator[pb.ExecStreamResponse]:
        return self.server_stream("ExecStream", req, pb.ExecStreamResponse, timeout_s)

    async def start_background(
        self, req: pb.StartBackgroundRequest, timeout_s: float | None = None
    ) -> pb.StartBackgroundResponse:
        return await self.unary("StartBackground", req, pb.StartBackgroundResponse, timeout_s)

    async def list_processes(
        self, req: pb.ListProcessesRequest, timeout_s: float | None = None
    ) -> pb.ListProcessesResponse:
        return await self.unary("ListProcesses", req, pb.ListProcessesResponse, timeout_s)

    async def kill_process(self, req: pb.KillProcessRequest, timeout_s: float | None = None) -> pb.KillProcessResponse:
        return await self.unary("KillProcess", req, pb.KillProcessResponse, timeout_s)

    def connect_process(
        self, req: pb.ConnectProcessRequest, timeout_s: float | None = None
    ) -> AsyncIterator[pb.ConnectProcessResponse]:
        return self.server_stream("ConnectProcess", req, pb.ConnectProcessResponse, timeout_s)

    # files --------------------------------------------------------------------------------

    async def write_file(self, req: pb.WriteFileRequest, timeout_s: float | None = None) -> pb.WriteFileResponse:
        return await self.unary("WriteFile", req, pb.WriteFileResponse, timeout_s)

    async def read_file(self, req: pb.ReadFileRequest, timeout_s: float | None = None) -> pb.ReadFileResponse:
        return await self.unary("ReadFile", req, pb.ReadFileResponse, timeout_s)

    async def list_dir(self, req: pb.ListDirRequest, timeout_s: float | None = None) -> pb.ListDirResponse:
        return await self.unary("ListDir", req, pb.ListDirResponse, timeout_s)

    async def make_dir(self, req: pb.MakeDirRequest, timeout_s: float | None = None) -> pb.MakeDirResponse:
        return await self.unary("MakeDir", req, pb.MakeDirResponse, timeout_s)

    async def remove_path(self, req: pb.RemovePathRequest, timeout_s: float | None = None) -> pb.RemovePathResponse:
        return await self.unary("RemovePath", req, pb.RemovePathResponse, timeout_s)

    async def write_file_stream(
        self, requests: AsyncIterator[pb.WriteFileStreamRequest], timeout_s: float | None = None
    ) -> pb.WriteFileStreamResponse:
        """First message ``meta``, then ``chunk`` messages (64 KiB is what the reference sends)."""
        return await self.client_stream("WriteFileStream", requests, pb.WriteFileStreamResponse, timeout_s)

    def read_file_stream(
        self, req: pb.ReadFileStreamRequest, timeout_s: float | None = None
    ) -> AsyncIterator[pb.ReadFileStreamResponse]:
        return self.server_stream("ReadFileStream", req, pb.ReadFileStreamResponse, timeout_s)

    # snapshots and templates ---------------------------------------------------------------

    async def create_snapshot(
        self, req: pb.CreateSnapshotRequest, timeout_s: float | None = None
    ) -> pb.CreateSnapshotResponse:
        return await self.unary("CreateSnapshot", req, pb.CreateSnapshotResponse, timeout_s)

    async def delete_snapshot(
        self, req: pb.DeleteSnapshotRequest, timeout_s: float | None = None
    ) -> pb.DeleteSnapshotResponse:
        return await self.unary("DeleteSnapshot", req, pb.DeleteSnapshotResponse, timeout_s)

    async def flatten_rootfs(
        self, req: pb.FlattenRootfsRequest, timeout_s: float | None = None
    ) -> pb.FlattenRootfsResponse:
        return await self.unary("FlattenRootfs", req, pb.FlattenRootfsResponse, timeout_s)

    async def get_template_size(
        self, req: pb.GetTemplateSizeRequest, timeout_s: float | None = None
    ) -> pb.GetTemplateSizeResponse:
        return await self.unary("GetTemplateSize", req, pb.GetTemplateSizeResponse, timeout_s)

    # metrics --------------------------------------------------------------------------------

    async def get_sandbox_metrics(
        self, req: pb.GetSandboxMetricsRequest, timeout_s: float | None = None
    ) -> pb.GetSandboxMetricsResponse:
        return await self.unary("GetSandboxMetrics", req, pb.GetSandboxMetricsResponse, timeout_s)

    async def flush_sandbox_metrics(
        self, req: pb.FlushSandboxMetricsRequest, timeout_s: float | None = None
    ) -> pb.FlushSandboxMetricsResponse:
        return await self.unary("FlushSandboxMetrics", req, pb.FlushSandboxMetricsResponse, timeout_s)

    # PTY ------------------------------------------------------------------------------------

    def pty_attach(
        self, req: pb.PtyAttachRequest, timeout_s: float | None = None
    ) -> AsyncIterator[pb.PtyAttachResponse]:
        return self.server_stream("PtyAttach", req, pb.PtyAttachResponse, timeout_s)

    async def pty_send_input(
        self, req: pb.PtySendInputRequest, timeout_s: float | None = None
    ) -> pb.PtySendInputResponse:
        return await self.unary("PtySendInput", req, pb.PtySendInputResponse, timeout_s)

    async def pty_resize(self, req: pb.PtyResizeRequest, timeout_s: float | None = None) -> pb.PtyResizeResponse:
        return await self.unary("PtyResize", req, pb.PtyResizeResponse, timeout_s)

    async def pty_kill(self, req: pb.PtyKillRequest, timeout_s: float | None = None) -> pb.PtyKillResponse:
        return await self.unary("PtyKill", req, pb.PtyKillResponse, timeout_s)

    # port proxy --------------------------------------------------------------------------------

    def proxy_url(self, sandbox_id: str, port: int, path: str = "/", scheme: str | None = None) -> str:
        """``/proxy/{id}/{port}`` + ``path`` by plain concatenation (so trailing slashes survive)."""
        url = f"{self.url}/proxy/{sandbox_id}/{port}{path}"
        if scheme is not None:
            url = scheme + url[url.index("://") :]
        return url

    async def proxy_request(
        self,
        sandbox_id: str,
        port: int,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
    ) -> httpx.Response:
        """Forward one HTTP request through the agent; returns a *streamed* response (caller closes it).

        ``path`` includes the query string. Headers are sent as given (no compression negotiation is
        added); ``Host`` becomes the agent address. Transport failures raise ``AgentError``.
        """
        pool = self._current()
        hdrs = [(k, v) for k, v in (headers or []) if k.lower() != "host"]
        request = httpx.Request(method, self.proxy_url(sandbox_id, port, path), headers=hdrs, content=content)
        pool.active += 1
        try:
            response = await pool.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            await self._release(pool)
            code = "deadline_exceeded" if isinstance(exc, httpx.TimeoutException) else "unavailable"
            raise AgentError(code, f"{type(exc).__name__}: {exc}") from exc
        release = response.aclose

        async def aclose() -> None:
            try:
                await release()
            finally:
                await self._release(pool)

        response.aclose = aclose  # type: ignore[method-assign]
        return response

    async def proxy_websocket(
        self,
        sandbox_id: str,
        port: int,
        path: str,
        headers: Iterable[tuple[str, str]] | None = None,
        subprotocols: list[str] | None = None,
        open_timeout: float = 30.0,
    ) -> ClientConnection:
        """Open a WebSocket to the capsule port through the agent (wss + mTLS). Caller closes it."""
        url = self.proxy_url(sandbox_id, port, path, scheme="wss" if self.url.startswith("https") else "ws")
        ctx = self._provider() if url.startswith("wss") else None
        try:
            return await websockets.connect(
                url,
                ssl=ctx,
                additional_headers=list(headers or []),
                subprotocols=subprotocols,  # type: ignore[arg-type]
                open_timeout=open_timeout,
                compression=None,
                max_size=None,
                ping_interval=None,
                user_agent_header=None,
            )
        except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
            raise AgentError("unavailable", f"{type(exc).__name__}: {exc}") from exc


def strip_proxy_prefix(location: str, sandbox_id: str, port: int) -> str:
    """Remove the agent's ``/proxy/{id}/{port}`` prefix from a ``Location`` header (control-plane §12)."""
    prefix = f"/proxy/{sandbox_id}/{port}"
    if location.startswith(prefix):
        rest = location[len(prefix) :]
        return rest if rest.startswith("/") else "/" + rest
    return location


class AgentPool:
    """One ``AgentClient`` per host ID; a changed address replaces the client."""

    def __init__(self, ssl_context_provider: SSLProvider) -> None:
        self._provider = ssl_context_provider
        self._clients: dict[str, AgentClient] = {}

    def get(self, host_id: str, address: str) -> AgentClient:
        client = self._clients.get(host_id)
        if client is not None and client.address == address:
            return client
        if client is not None:
            _spawn(client.aclose())
        client = self._clients[host_id] = AgentClient(address, self._provider)
        return client

    async def drop(self, host_id: str) -> None:
        """Forget a host (deleted); its connections are closed."""
        client = self._clients.pop(host_id, None)
        if client is not None:
            await client.aclose()

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            await c.aclose()


_closing: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Close something in the background (keeping a reference so the task is not collected)."""
    try:
        task = asyncio.get_running_loop().create_task(coro)
    except RuntimeError:  # no running loop: nothing can be in flight either
        coro.close()
        return
    _closing.add(task)
    task.add_done_callback(_closing.discard)
