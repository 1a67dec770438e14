"""The host agent process: credentials, heartbeats, token refresh, sandbox events, the mTLS RPC server.

Behaviour follows hostagent-wire.md §9 (reactions to each CP answer):

* **Start**: ``--register`` → always (re-)register and persist the credentials; otherwise load them.
  The listening socket is bound before the first heartbeat, so a host that cannot serve never
  reports itself online; heartbeats and the server then start together.
* **Heartbeat** (at once, then every ``heartbeat_interval``): 204 healthy; 401/403 → refresh
  (refused → pause every sandbox, stop heartbeating); 404 → the host was deleted: remove the
  credentials, destroy the sandboxes, exit 0; network error ×3 in a row → pause every sandbox once and
  keep trying. A network error *during* a refresh counts as a network failure, not as a refusal: only
  a CP answer can revoke a host.
* **Refresh** also runs proactively at 80 % of the JWT's or the certificate's lifetime, and on SIGHUP.
  The new certificate is hot-swapped into the listener (``ServerTLS.update``).
* **Sandbox events** from the runtime are posted in background tasks (3 attempts, 0.5 s / 1 s pauses,
  refresh on 401/403, 30 s budget), never blocking the runtime or the RPCs.
* **Stop**: SIGTERM/SIGINT, the ``Terminate`` RPC, host deletion, or the parent process going away
  (embedded mode). In every case the capsules are destroyed before exit: they are children of this
  process (bwrap + nsenter trees, cgroups, veths) and nobody could reach them without the agent, so
  leaving them behind would only leak resources. After ``Terminate`` the agent asks the CP (a few
  heartbeats) whether the host row is gone and removes its credentials if so, since the CP sends
  ``Terminate`` right before deleting the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from app.hostagent.agent_cp import CPClient, CPRejected, error_message
from app.hostagent.agent_creds import (
    Credentials,
    CredentialsError,
    credentials_path,
    delete_credentials,
    host_facts,
    load_credentials,
    save_credentials,
)
from app.hostagent.runtime.base import Runtime, RuntimeErr
from app.hostagent.server import agent_server, build_agent_app
from app.hostagent.tls import ServerTLS, TLSConfigError

log = logging.getLogger("wrenn.agent")

HEARTBEAT_INTERVAL = 30.0
NETWORK_FAILURES_BEFORE_PAUSE = 3
EVENT_PAUSES = (0.5, 1.0)  # between the 3 attempts
EVENT_BUDGET = 30.0
REFRESH_RETRY = 60.0  # after a scheduled refresh could not reach the CP
TERMINATE_CONFIRM = 10.0  # how long to ask the CP whether the host is gone after Terminate
TERMINATE_CONFIRM_EVERY = 0.5
SERVER_GRACE = 2  # seconds uvicorn waits for open connections at stop
SERVER_STOP_TIMEOUT = 10
RUNTIME_SHUTDOWN_TIMEOUT = 60.0
EVENT_DRAIN_TIMEOUT = 5.0
DEFAULT_PORT = 50051

EventCallback = Callable[[str, str, dict[str, str]], None]
RuntimeFactory = Callable[[EventCallback], Runtime]


class AgentStartError(RuntimeError):
    """The agent cannot start; ``exit_code`` 2 for usage problems, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopReason(enum.Enum):
    SIGNAL = "stop requested"
    TERMINATED = "Terminate RPC"
    HOST_DELETED = "host deleted on the control plane"
    PARENT_GONE = "parent process exited"
    SERVER_FAILED = "RPC server failed"


class RefreshOutcome(enum.Enum):
    OK = "ok"
    REJECTED = "rejected"  # the CP answered, and not 200: the refresh token is no good
    UNREACHABLE = "unreachable"  # network error; try again later


@dataclass
class AgentOptions:
    cp_url: str
    data_dir: Path
    address: str = ""
    register_token: str | None = None
    listen: str = f":{DEFAULT_PORT}"
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    runtime_dir: Path | None = None
    parent_pid: int | None = None  # stop when this process is no longer our parent


# ---------------------------------------------------------------- listen address


def parse_listen(listen: str) -> tuple[str, int]:
    """``:50051`` → all interfaces; ``ip:port``, ``[v6]:port``, ``name:port``."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise AgentStartError(f"listen address must be HOST:PORT or :PORT, got {listen!r}", 2)
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def address_port(address: str) -> int | None:
    _, sep, port = address.rpartition(":")
    return int(port) if sep and port.isdigit() else None


def bind_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            family = socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit TCP_NODELAY (Linux). Without it a unary response's body,
        # written after its headers, waits on the peer's delayed ACK: +40 ms per RPC over TLS.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise AgentStartError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.setblocking(False)
    return sock


# ---------------------------------------------------------------- runtime


def _warn_if_not_traversable(path: Path) -> None:
    for p in [path, *path.parents]:
        if p.exists() and not os.stat(p).st_mode & 0o001:
            log.warning("%s is not traversable by other users (o+x); capsules cannot start under %s "
                        "(use a data dir such as /var/lib/wrenn, or --runtime-dir)", p, path)
            return


def bwrap_runtime_factory(runtime_dir: Path) -> RuntimeFactory:
    def make(on_event: EventCallback) -> Runtime:
        from app.hostagent.runtime.bwrap import BwrapRuntime

        runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        _warn_if_not_traversable(runtime_dir)
        # WRENN_WARM_POOL: pre-booted minimal capsules kept ready for creates (0 = boot on demand).
        warm = int(os.environ.get("WRENN_WARM_POOL", "0") or 0)
        return BwrapRuntime(runtime_dir, on_event=on_event, warm_pool=warm)

    return make


# ---------------------------------------------------------------- the agent


class HostAgent:
    """One agent process. ``await run()`` returns the exit code; ``stop()`` ends it gracefully."""

    def __init__(self, opts: AgentOptions, runtime_factory: RuntimeFactory | None = None) -> None:
        self.opts = opts
        self.cp = CPClient(opts.cp_url)
        self.creds_path = credentials_path(opts.data_dir)
        self.creds: Credentials | None = None
        self.tls: ServerTLS | None = None
        self.runtime: Runtime | None = None
        self.port = 0
        runtime_dir = opts.runtime_dir or Path(opts.data_dir)  # the runtime keeps capsules in <dir>/capsules
        self._runtime_factory = runtime_factory or bwrap_runtime_factory(runtime_dir)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._stop_reason = StopReason.SIGNAL
        self._refresh_lock = asyncio.Lock()
        self._refresh_now = asyncio.Event()
        self._heartbeating = True
        self._net_failures = 0
        self._paused_unreachable = False
        self._event_tasks: set[asyncio.Task[bool]] = set()

    # control -----------------------------------------------------------------

    def stop(self, reason: StopReason = StopReason.SIGNAL) -> None:
        """End the agent (first reason wins). Call from the agent's loop; see ``stop_threadsafe``."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def stop_threadsafe(self, reason: StopReason = StopReason.SIGNAL) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.stop, reason)

    def request_refresh(self) -> None:
        """Refresh the credentials now (SIGHUP)."""
        self._refresh_now.set()

    @property
    def _c(self) -> Credentials:
        assert self.creds is not None, "credentials are loaded in run()"
        return self.creds

    # start-up ----------------------------------------------------------------

    async def obtain_credentials(self) -> Credentials:
        if self.opts.register_token:
            creds = await self._register(self.opts.register_token)
        else:
            creds = self._load()
        self.creds = creds
        return creds

    async def _register(self, token: str) -> Credentials:
        if not self.opts.address:
            raise AgentStartError("--address HOST:PORT is required with --register", 2)
        try:
            body = await self.cp.register(token, host_facts(self.opts.address))
            creds = Credentials.from_registration(body)
        except CPRejected as exc:
            raise AgentStartError(f"registration refused by the control plane: {exc.message} "
                                  f"(HTTP {exc.status})") from exc
        except httpx.HTTPError as exc:
            raise AgentStartError(f"registration failed: cannot reach {self.cp.base}: {exc!r}") from exc
        except CredentialsError as exc:
            raise AgentStartError(f"registration answer unusable: {exc}") from exc
        try:
            save_credentials(self.creds_path, creds)
        except OSError as exc:
            raise AgentStartError(f"cannot write {self.creds_path}: {exc}") from exc
        log.info("registered as %s; credentials saved to %s", creds.host_id, self.creds_path)
        return creds

    def _load(self) -> Credentials:
        try:
            creds = load_credentials(self.creds_path)
        except CredentialsError as exc:
            raise AgentStartError(f"{exc}; register again with --register <token>") from exc
        if creds is None:
            raise AgentStartError(f"no host credentials in {self.creds_path}; "
                                  "register this host with --register <token>", 2)
        log.info("loaded credentials of %s from %s", creds.host_id, self.creds_path)
        return creds

    def _server_tls(self, creds: Credentials) -> ServerTLS:
        try:
            return ServerTLS(creds.cert_pem, creds.key_pem, creds.ca_cert_pem)
        except TLSConfigError as exc:
            raise AgentStartError(f"host certificate unusable: {exc}; register again with --register") from exc

    # main --------------------------------------------------------------------

    async def run(self, stop_event: asyncio.Event | None = None) -> int:
        """Register/load, serve, heartbeat until stopped; then clean up. Raises ``AgentStartError``."""
        self._loop = asyncio.get_running_loop()
        try:
            creds = await self.obtain_credentials()
            self.tls = self._server_tls(creds)
            host, port = parse_listen(self.opts.listen)
            sock = bind_listener(host, port)
        except BaseException:
            await self.cp.aclose()
            raise
        self.port = sock.getsockname()[1]
        self.runtime = self._runtime_factory(self.on_runtime_event)
        server = self._make_server(self.runtime, self.tls, host)
        serve_task = asyncio.create_task(server.serve(sockets=[sock]), name="agent-rpc-server")
        helpers = self._start_helpers(stop_event)
        log.info("host %s serving hostagent.v1 over mTLS on %s:%d", creds.host_id, host, self.port)
        try:
            await self._wait_for_stop(serve_task)
        finally:
            await self._shutdown(server, serve_task, helpers)
            sock.close()
        return 1 if self._stop_reason is StopReason.SERVER_FAILED else 0

    def _make_server(self, runtime: Runtime, tls: ServerTLS, host: str) -> uvicorn.Server:
        server = agent_server(build_agent_app(runtime, self._on_terminate), tls.context, host, self.port)
        # the agent handles SIGTERM/SIGINT itself (destroying capsules); keep uvicorn's handlers out
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        server.config.timeout_graceful_shutdown = SERVER_STOP_TIMEOUT  # backstop; see _stop_server
        return server

    def _start_helpers(self, stop_event: asyncio.Event | None) -> list[asyncio.Task[None]]:
        coros: list[Coroutine[Any, Any, None]] = [self._heartbeat_loop(), self._refresh_loop()]
        if self.opts.parent_pid:
            coros.append(self._watch_parent(self.opts.parent_pid))
        if stop_event is not None:
            coros.append(self._watch_external(stop_event))
        return [asyncio.create_task(c) for c in coros]

    async def _wait_for_stop(self, serve_task: asyncio.Task[None]) -> None:
        stop_wait = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({stop_wait, serve_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
        if serve_task.done() and not self._stop.is_set():
            exc = None if serve_task.cancelled() else serve_task.exception()
            log.error("the RPC server stopped unexpectedly: %r", exc)
            self.stop(StopReason.SERVER_FAILED)
        log.info("stopping: %s", self._stop_reason.value)

    async def _watch_external(self, stop_event: asyncio.Event) -> None:
        await stop_event.wait()
        self.stop(StopReason.SIGNAL)

    async def _watch_parent(self, parent_pid: int) -> None:
        # no event exists for "parent died" short of PR_SET_PDEATHSIG (unsafe to set from a threaded parent)
        while os.getppid() == parent_pid:  # noqa: ASYNC110
            await asyncio.sleep(1.0)
        log.warning("parent process %d is gone", parent_pid)
        self.stop(StopReason.PARENT_GONE)

    async def _sleep(self, seconds: float | None) -> None:
        """Sleep, waking early when the agent stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # shutdown ------------------------------------------------------------------

    async def _on_terminate(self) -> None:
        log.warning("Terminate received from the control plane")  # runtime already shut down by the RPC
        self.stop(StopReason.TERMINATED)

    async def _shutdown(
        self, server: uvicorn.Server, serve_task: asyncio.Task[None], helpers: list[asyncio.Task[None]]
    ) -> None:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        await self._stop_server(server, serve_task)
        if self._stop_reason is StopReason.TERMINATED and await self._host_is_gone():
            self._stop_reason = StopReason.HOST_DELETED
        if self._stop_reason is StopReason.HOST_DELETED:
            delete_credentials(self.creds_path)
            log.warning("host deleted on the control plane: removed %s", self.creds_path)
        await self._destroy_all()
        await self._drain_events()
        await self.cp.aclose()
        log.info("agent stopped")

    async def _stop_server(self, server: uvicorn.Server, serve_task: asyncio.Task[None]) -> None:
        """Graceful for ``SERVER_GRACE`` s, then abort what is left: idle keep-alive connections from the
        CP's pool never answer the TLS close_notify, and in-flight RPCs are moot (capsules go next)."""
        server.should_exit = True
        if await self._finished(serve_task, SERVER_GRACE):
            return
        server.force_exit = True
        for conn in list(server.server_state.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()
        if not await self._finished(serve_task, SERVER_STOP_TIMEOUT):
            serve_task.cancel()
            await asyncio.gather(serve_task, return_exceptions=True)

    @staticmethod
    async def _finished(task: asyncio.Task[None], wait_s: float) -> bool:
        done, _ = await asyncio.wait({task}, timeout=wait_s)
        return bool(done)

    async def _host_is_gone(self) -> bool:
        """After Terminate: heartbeat until the CP says 404 (the row is deleted just after Terminate)."""
        deadline = time.monotonic() + TERMINATE_CONFIRM
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                resp = await self.cp.heartbeat(self._c.host_id, self._c.jwt)
                if resp.status_code == 404:
                    return True
            await asyncio.sleep(TERMINATE_CONFIRM_EVERY)
        log.info("host still exists on the control plane after Terminate; keeping credentials")
        return False

    async def _destroy_all(self) -> None:
        if self.runtime is None:
            return
        try:
            await asyncio.wait_for(self.runtime.shutdown(), RUNTIME_SHUTDOWN_TIMEOUT)
        except Exception:
            log.exception("destroying capsules at shutdown failed")

    async def _drain_events(self) -> None:
        if self._event_tasks:
            await asyncio.wait(set(self._event_tasks), timeout=EVENT_DRAIN_TIMEOUT)
        for task in list(self._event_tasks):
            task.cancel()

    # heartbeat -----------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while self._heartbeating and not self._stop.is_set():
            await self.beat()
            if self._heartbeating:
                await self._sleep(self.opts.heartbeat_interval)

    async def beat(self) -> None:
        """One heartbeat and the reaction to its answer."""
        jwt = self._c.jwt
        try:
            resp = await self.cp.heartbeat(self._c.host_id, jwt)
        except httpx.TransportError as exc:
            await self._network_failure(exc)
            return
        status = resp.status_code
        if status == 204:
            self._healthy()
        elif status in (401, 403):
            log.warning("heartbeat refused (HTTP %d: %s); refreshing credentials", status, error_message(resp))
            await self._reauthenticate(jwt)
        elif status == 404:
            log.warning("heartbeat: host %s no longer exists on the control plane", self._c.host_id)
            self.stop(StopReason.HOST_DELETED)
        else:
            log.warning("heartbeat: unexpected HTTP %d: %s (ignored)", status, error_message(resp))

    def _healthy(self) -> None:
        if self._paused_unreachable:
            log.warning("control plane reachable again; sandboxes paused meanwhile stay paused "
                        "until the control plane resumes them")
        elif self._net_failures:
            log.info("control plane reachable again")
        self._net_failures = 0
        self._paused_unreachable = False

    async def _network_failure(self, exc: BaseException) -> None:
        self._net_failures += 1
        log.warning("control plane unreachable (%d in a row): %r", self._net_failures, exc)
        if self._net_failures >= NETWORK_FAILURES_BEFORE_PAUSE and not self._paused_unreachable:
            self._paused_unreachable = True
            log.error("control plane unreachable %d times in a row: pausing every sandbox", self._net_failures)
            await self.pause_all()

    async def _reauthenticate(self, used_jwt: str) -> None:
        outcome = await self.refresh(used_jwt)
        if outcome is RefreshOutcome.UNREACHABLE:
            await self._network_failure(ConnectionError("refresh could not reach the control plane"))
        elif outcome is RefreshOutcome.REJECTED:
            log.error("credential refresh refused: pausing every sandbox and stopping heartbeats; "
                      "this host must be registered again (--register <token>)")
            self._heartbeating = False
            self._refresh_now.set()  # wakes the refresh loop so it ends too
            await self.pause_all()

    async def pause_all(self) -> None:
        if self.runtime is None:
            return
        try:
            infos = await self.runtime.list_sandboxes()
        except Exception:
            log.exception("cannot list sandboxes to pause them")
            return
        for info in infos:
            if info.status != "running":
                continue
            try:
                await self.runtime.pause(info.sandbox_id)
                log.info("paused %s", info.sandbox_id)
            except RuntimeErr as exc:
                log.warning("cannot pause %s: %s", info.sandbox_id, exc)

    # refresh -------------------------------------------------------------------

    async def refresh(self, used_jwt: str | None = None) -> RefreshOutcome:
        """Exchange the refresh token (rotated by the CP). ``used_jwt``: the token that was refused;
        if the credentials changed since, another caller already refreshed."""
        async with self._refresh_lock:
            if used_jwt is not None and used_jwt != self._c.jwt:
                return RefreshOutcome.OK
            try:
                body = await self.cp.refresh(self._c.refresh_token)
                new = self._c.refreshed(body)
            except httpx.TransportError as exc:
                log.warning("refresh: control plane unreachable: %r", exc)
                return RefreshOutcome.UNREACHABLE
            except (CPRejected, httpx.HTTPError, CredentialsError) as exc:
                log.error("refresh failed: %s", exc)
                return RefreshOutcome.REJECTED
            self._adopt(new)
            return RefreshOutcome.OK

    def _adopt(self, new: Credentials) -> None:
        old, self.creds = self._c, new
        try:
            save_credentials(self.creds_path, new)
        except OSError as exc:  # the old refresh token is already revoked: keep going in memory
            log.error("cannot save refreshed credentials to %s: %s", self.creds_path, exc)
        if new.cert_pem != old.cert_pem and self.tls is not None:
            try:
                self.tls.update(new.cert_pem, new.key_pem, new.ca_cert_pem)
            except TLSConfigError as exc:
                log.error("refreshed certificate unusable, still serving the old one: %s", exc)
        log.info("credentials refreshed%s", " (new server certificate)" if new.cert_pem != old.cert_pem else "")

    async def _refresh_loop(self) -> None:
        delay = self._c.refresh_delay(time.time())
        while self._heartbeating and not self._stop.is_set():
            await self._wait_refresh_trigger(delay)
            if self._stop.is_set() or not self._heartbeating:
                return
            self._refresh_now.clear()
            outcome = await self.refresh()
            if outcome is RefreshOutcome.OK:
                delay = self._c.refresh_delay(time.time())
            elif outcome is RefreshOutcome.UNREACHABLE:
                delay = REFRESH_RETRY
            else:
                delay = None  # the heartbeat's 401 path decides what a refused token means

    async def _wait_refresh_trigger(self, delay: float | None) -> None:
        waits = [asyncio.create_task(self._stop.wait()), asyncio.create_task(self._refresh_now.wait())]
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    # sandbox events --------------------------------------------------------------

    def on_runtime_event(self, event: str, sandbox_id: str, extra: dict[str, str]) -> None:
        """The runtime's callback (``sandbox.auto_paused``…): post it in the background."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._spawn_event(event, sandbox_id, extra)
        else:
            loop.call_soon_threadsafe(self._spawn_event, event, sandbox_id, extra)

    def event_body(self, event: str, sandbox_id: str, extra: dict[str, str]) -> dict[str, Any]:
        body: dict[str, Any] = {"event": event, "sandbox_id": sandbox_id, "host_id": self._c.host_id,
                                "timestamp": int(time.time())}
        for key in ("host_ip", "error"):
            if extra.get(key):
                body[key] = extra[key]
        return body

    def _spawn_event(self, event: str, sandbox_id: str, extra: dict[str, str]) -> None:
        task = asyncio.ensure_future(self.send_event(self.event_body(event, sandbox_id, extra)))
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    async def send_event(self, body: dict[str, Any]) -> bool:
        """POST one sandbox event: up to 3 attempts within 30 s; True once the CP answered 204."""
        try:
            async with asyncio.timeout(EVENT_BUDGET):
                return await self._send_event_attempts(body)
        except TimeoutError:
            log.warning("sandbox event %s for %s: gave up after %.0f s", body["event"], body["sandbox_id"],
                        EVENT_BUDGET)
            return False

    async def _send_event_attempts(self, body: dict[str, Any]) -> bool:
        problem = ""
        for pause in (*EVENT_PAUSES, None):
            jwt = self._c.jwt
            try:
                resp = await self.cp.sandbox_event(jwt, body)
            except httpx.TransportError as exc:
                problem = repr(exc)
            else:
                if resp.status_code == 204:
                    log.info("sandbox event %s for %s delivered", body["event"], body["sandbox_id"])
                    return True
                problem = f"HTTP {resp.status_code}: {error_message(resp)}"
                if resp.status_code in (401, 403):
                    await self.refresh(jwt)
                elif resp.status_code == 400:
                    break  # a malformed event will not improve by retrying
            if pause is None:
                break
            await asyncio.sleep(pause)
        log.warning("sandbox event %s for %s not delivered: %s", body["event"], body["sandbox_id"], problem)
        return False
