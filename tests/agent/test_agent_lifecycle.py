"""``wrenn-agent`` as a real process against a real control plane (uvicorn on a loopback port, embedded
Postgres + Redis): register, credentials file, heartbeats, mTLS RPC, restart, refresh + certificate hot
swap, a refused/expired JWT, host deletion. Heartbeats every 0.3 s (``WRENN_HEARTBEAT_INTERVAL``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import uvicorn

from app.core import ids
from app.core.bootstrap import bootstrap
from app.core.config import Settings
from app.hostagent import tls
from app.hostagent.agent import local_agent_command, run_agent
from app.hostagent.agent_core import AgentOptions, HostAgent
from app.hostagent.client import AgentClient, AgentError
from app.hostagent.proto import hostagent_pb2 as pb
from app.hostagent.runtime._cgroup import CgroupSet
from app.main import create_app

CRED_FIELDS = {"host_id", "jwt", "refresh_token", "cert_pem", "key_pem", "ca_cert_pem"}
HEARTBEAT = "0.3"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(check: Callable[[], Awaitable[Any]], what: str | Callable[[], str], wait_s: float = 15) -> Any:
    """Poll ``check`` until truthy; ``what`` (or its result, computed on failure) names it."""
    deadline = time.monotonic() + wait_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- a real control plane


class ControlPlane:
    """create_app(settings) under uvicorn in a thread on a free loopback port, plus an admin session."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.admin = httpx.AsyncClient(base_url=self.url, timeout=30)
        self.ca = tls.load_ca(settings.ca_cert, settings.ca_key)
        self.client_certs = tls.ClientCertHolder(self.ca)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("control plane did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    async def login(self) -> None:
        record = await bootstrap(self.settings, self.url)
        assert record is not None
        r = await self.admin.post("/v1/auth/login",
                                  json={"email": record["admin_email"], "password": record["admin_password"]})
        assert r.status_code == 200, r.text
        self.admin.headers["X-CSRF-Token"] = self.admin.cookies["wrenn_csrf"]

    async def new_host(self) -> tuple[str, str]:
        r = await self.admin.post("/v1/hosts", json={"type": "regular"})
        assert r.status_code == 201, r.text
        return r.json()["host"]["id"], r.json()["registration_token"]

    async def host(self, host_id: str) -> dict[str, Any]:
        r = await self.admin.get(f"/v1/hosts/{host_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def agent_client(self, port: int) -> AgentClient:
        return AgentClient(f"127.0.0.1:{port}", self.client_certs)


@pytest.fixture
async def cp(settings: Settings, flushed_redis: None) -> AsyncIterator[ControlPlane]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    plane = ControlPlane(settings)
    await asyncio.to_thread(plane.start)
    await plane.login()
    yield plane
    await plane.admin.aclose()
    await asyncio.to_thread(plane.stop)


# ---------------------------------------------------------------- the agent process


class AgentProc:
    def __init__(self, cp_url: str, data_dir: Path, port: int, log: Path) -> None:
        self.cp_url, self.data_dir, self.port, self.log_path = cp_url, data_dir, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.creds_path = data_dir / "host-credentials.json"

    def start(self, *extra: str, **env: str) -> AgentProc:
        cmd = [*local_agent_command(self.cp_url, self.data_dir, self.port), *extra]
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("WRENN_")}
        child_env.update(WRENN_HEARTBEAT_INTERVAL=HEARTBEAT, PYTHONUNBUFFERED="1", **env)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=child_env, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def creds(self) -> dict[str, str]:
        data: dict[str, str] = json.loads(self.creds_path.read_text())
        return data

    async def exited(self, wait_s: float = 20) -> int:
        assert self.proc is not None
        proc = self.proc

        async def done() -> bool:
            return proc.poll() is not None

        await _until(done, lambda: f"agent exit; log:\n{self.output}", wait_s)
        return proc.returncode

    async def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.exited()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def agents(cp: ControlPlane, tmp_path: Path) -> Iterator[Callable[[], AgentProc]]:
    made: list[AgentProc] = []

    def make() -> AgentProc:
        a = AgentProc(cp.url, tmp_path / f"agent{len(made)}", _free_port(), tmp_path / f"agent{len(made)}.log")
        made.append(a)
        return a

    yield make
    for a in made:
        a.kill()


async def _registered(cp: ControlPlane, agent: AgentProc) -> str:
    host_id, token = await cp.new_host()
    agent.start("--register", token)

    async def creds_written() -> bool:
        return agent.creds_path.exists() or agent.proc is None or agent.proc.poll() is not None

    await _until(creds_written, "credentials file")
    assert agent.creds_path.exists(), agent.output
    return host_id


async def _heartbeat_advances(cp: ControlPlane, host_id: str) -> dict[str, Any]:
    first = (await cp.host(host_id))["last_heartbeat_at"]

    async def advanced() -> dict[str, Any] | None:
        h = await cp.host(host_id)
        return h if h["status"] == "online" and h.get("last_heartbeat_at") not in (None, first) else None

    host: dict[str, Any] = await _until(advanced, "a new heartbeat")
    return host


async def _rpc_list(cp: ControlPlane, port: int) -> pb.ListSandboxesResponse:
    client = cp.agent_client(port)
    try:
        async def answered() -> pb.ListSandboxesResponse | None:
            try:
                return await client.list_sandboxes(pb.ListSandboxesRequest(), timeout_s=5)
            except AgentError as exc:
                if exc.code != "unavailable":
                    raise
                return None

        result: pb.ListSandboxesResponse = await _until(answered, "the agent's RPC listener")
        return result
    finally:
        await client.aclose()


def _served_cert(port: int, ca: tls.CertificateAuthority) -> bytes:
    """DER of the certificate the agent presents to a CP client right now."""
    client = tls.issue_client_cert(ca)
    ctx = tls.client_ssl_context(ca.cert_pem, client.cert_pem, client.key_pem)
    with socket.create_connection(("127.0.0.1", port), 5) as raw, ctx.wrap_socket(raw,
                                                                                    server_hostname="127.0.0.1") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return der


def _pem_der(pem: str) -> bytes:
    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    return base64.b64decode(body)


# ---------------------------------------------------------------- tests


async def test_register_heartbeat_rpc_restart_refresh_delete(cp: ControlPlane, agents: Callable[[], AgentProc]) -> None:
    agent = agents()
    host_id = await _registered(cp, agent)

    # credentials: 0600, exactly the reference agent's fields, host_id from the JWT
    assert stat.S_IMODE(agent.creds_path.stat().st_mode) == 0o600
    creds = agent.creds()
    assert set(creds) == CRED_FIELDS and all(creds.values())
    assert creds["host_id"] == host_id
    assert "BEGIN CERTIFICATE" in creds["cert_pem"] and "EC PRIVATE KEY" in creds["key_pem"]

    # heartbeats keep the host online; the registration facts reached the CP
    host = await _heartbeat_advances(cp, host_id)
    assert host["address"] == f"127.0.0.1:{agent.port}"
    assert host["arch"] in ("amd64", "arm64") and host["cpu_cores"] >= 1 and host["memory_mb"] > 0

    # the CP calls an RPC over mTLS with its client certificate; the agent serves the host certificate
    listed = await _rpc_list(cp, agent.port)
    assert list(listed.sandboxes) == []
    assert hashlib.sha256(await asyncio.to_thread(_served_cert, agent.port, cp.ca)).digest() == \
        hashlib.sha256(_pem_der(creds["cert_pem"])).digest()
    # a client certificate from another CA is refused
    stranger = tls.generate_ca()
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        await asyncio.to_thread(_rpc_with_foreign_cert, agent.port, cp.ca, stranger)

    # SIGHUP: refresh now → rotated refresh token, new JWT, new certificate served (hot swap)
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)

    async def rotated() -> dict[str, str] | None:
        now = agent.creds()
        return now if now["refresh_token"] != creds["refresh_token"] else None

    refreshed = await _until(rotated, "a rotated refresh token")
    assert refreshed["cert_pem"] != creds["cert_pem"]  # (the JWT may be byte-identical within the same second)
    assert stat.S_IMODE(agent.creds_path.stat().st_mode) == 0o600
    old = await cp.admin.post("/v1/hosts/auth/refresh", json={"refresh_token": creds["refresh_token"]})
    assert old.status_code == 401, old.text
    assert await asyncio.to_thread(_served_cert, agent.port, cp.ca) == _pem_der(refreshed["cert_pem"])
    await _heartbeat_advances(cp, host_id)  # the new JWT is accepted

    # SIGTERM: clean exit, credentials kept
    assert await agent.terminate() == 0
    assert agent.creds_path.exists()

    # restart without --register: resumes with the saved (refreshed) credentials
    agent.start()
    await _heartbeat_advances(cp, host_id)
    assert list((await _rpc_list(cp, agent.port)).sandboxes) == []
    assert agent.creds()["refresh_token"] == refreshed["refresh_token"]

    # deleting the host on the CP: Terminate RPC / heartbeat 404 → the agent exits and forgets itself
    r = await cp.admin.delete(f"/v1/hosts/{host_id}", params={"force": "true"})
    assert r.status_code == 204, r.text
    assert await agent.exited() == 0, agent.output
    assert not agent.creds_path.exists(), agent.output


def _rpc_with_foreign_cert(port: int, ca: tls.CertificateAuthority, stranger: tls.CertificateAuthority) -> None:
    foreign = tls.issue_client_cert(stranger)
    ctx = tls.client_ssl_context(ca.cert_pem, foreign.cert_pem, foreign.key_pem)
    with socket.create_connection(("127.0.0.1", port), 5) as raw, ctx.wrap_socket(raw,
                                                                                    server_hostname="127.0.0.1") as s:
        # TLS 1.3: the server checks the client certificate after the handshake; the refusal shows on I/O
        s.sendall(b"POST /hostagent.v1.HostAgentService/ListSandboxes HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/proto\r\nContent-Length: 0\r\n\r\n")
        if not s.recv(1024):
            raise ConnectionResetError("closed without an answer")


async def test_refused_jwt_is_refreshed_and_refused_refresh_stops_heartbeats(
    cp: ControlPlane, agents: Callable[[], AgentProc]
) -> None:
    agent = agents()
    host_id = await _registered(cp, agent)
    await _heartbeat_advances(cp, host_id)
    assert await agent.terminate() == 0

    # a JWT the CP no longer accepts (bad signature): heartbeat 401 → refresh → back online
    creds = agent.creds()
    head, payload, _sig = creds["jwt"].split(".")
    agent.creds_path.write_text(json.dumps({**creds, "jwt": f"{head}.{payload}.AAAA"}))
    agent.start()

    async def new_jwt() -> bool:
        return agent.creds()["jwt"] != f"{head}.{payload}.AAAA"

    await _until(new_jwt, lambda: f"a refreshed JWT; log:\n{agent.output}")
    await _heartbeat_advances(cp, host_id)
    assert "heartbeat refused (HTTP 401" in agent.output
    assert await agent.terminate() == 0

    # both the JWT and the refresh token refused: pause everything, stop heartbeating, keep running
    creds = agent.creds()
    head, payload, _sig = creds["jwt"].split(".")
    agent.creds_path.write_text(json.dumps({**creds, "jwt": f"{head}.{payload}.AAAA", "refresh_token": "0" * 64}))
    agent.start()

    async def gave_up() -> bool:
        return "stopping heartbeats" in agent.output

    await _until(gave_up, "the refresh refusal")
    before = (await cp.host(host_id))["last_heartbeat_at"]
    await asyncio.sleep(1.0)  # > 3 heartbeat intervals
    assert (await cp.host(host_id))["last_heartbeat_at"] == before
    assert agent.proc is not None and agent.proc.poll() is None  # still serving RPCs
    assert await agent.terminate() == 0

    # host deleted while the agent was down: the first heartbeat gets 404 → forget the host, exit 0
    agent.creds_path.write_text(json.dumps(creds))  # the last good credentials
    r = await cp.admin.delete(f"/v1/hosts/{host_id}", params={"force": "true"})
    assert r.status_code == 204, r.text
    agent.start()
    assert await agent.exited() == 0
    assert not agent.creds_path.exists()
    assert "no longer exists" in agent.output


async def test_cli_refuses_to_start_without_usable_credentials(
    cp: ControlPlane, agents: Callable[[], AgentProc]
) -> None:
    agent = agents()
    agent.start()  # no credentials file, no --register
    assert await agent.exited() == 2
    assert "--register" in agent.output

    bad = agents()
    bad.start("--register", "f" * 64)  # not a token the CP issued
    assert await bad.exited() == 1
    assert "registration refused" in bad.output and "HTTP 401" in bad.output
    assert not bad.creds_path.exists()

    unreachable = AgentProc(f"http://127.0.0.1:{_free_port()}", bad.data_dir, bad.port, bad.log_path)
    unreachable.start("--register", "f" * 64)
    assert await unreachable.exited() == 1
    assert "cannot reach" in unreachable.output


def test_module_entry_point_prints_help() -> None:
    out = subprocess.run([sys.executable, "-m", "app.hostagent.agent", "--help"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and "--register" in out.stdout and "--cp-url" in out.stdout


# ---------------------------------------------------------------- sandbox events (in process, real CP)


async def test_sandbox_events_retry_refresh_and_give_up(cp: ControlPlane, tmp_path: Path) -> None:
    _, token = await cp.new_host()
    agent = HostAgent(AgentOptions(cp_url=cp.url, data_dir=tmp_path / "ev", address="127.0.0.1:1",
                                   register_token=token))
    creds = await agent.obtain_credentials()
    sid = ids.encode(ids.CAPSULE, uuid.uuid4())
    try:
        assert await agent.send_event(agent.event_body("sandbox.auto_paused", sid, {})) is True
        body = agent.event_body("sandbox.brand_new_event", sid, {"host_ip": "10.11.0.2", "error": "x"})
        assert body["host_id"] == creds.host_id and body["host_ip"] == "10.11.0.2" and body["timestamp"] > 0
        assert await agent.send_event(body) is True  # unknown names are accepted

        # a refused JWT: refresh (rotating the refresh token), then delivered
        agent.creds = dataclasses.replace(creds, jwt=creds.jwt.rsplit(".", 1)[0] + ".AAAA")
        assert await agent.send_event(agent.event_body("sandbox.stopped", sid, {})) is True
        assert agent.creds.refresh_token != creds.refresh_token

        # a malformed event (400) is not retried
        started = time.monotonic()
        assert await agent.send_event({**body, "sandbox_id": ""}) is False
        assert time.monotonic() - started < 0.4
    finally:
        await agent.cp.aclose()

    # unreachable CP: 3 attempts with 0.5 s and 1 s pauses, then give up
    lost = HostAgent(AgentOptions(cp_url=f"http://127.0.0.1:{_free_port()}", data_dir=tmp_path / "ev"))
    lost.creds = agent.creds
    started = time.monotonic()
    try:
        assert await lost.send_event(lost.event_body("sandbox.auto_paused", sid, {})) is False
    finally:
        await lost.cp.aclose()
    assert 1.4 < time.monotonic() - started < 10


# ---------------------------------------------------------------- with capsules (root + bwrap)


@pytest.fixture
def traversable_dir() -> Iterator[Path]:
    # not pytest's tmp_path (0700): the capsule's unprivileged host uid must traverse the data dir
    base = Path(tempfile.mkdtemp(prefix="wrenn-agent-test-", dir="/var/tmp"))
    os.chmod(base, 0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _kill_cgroup(sandbox_id: str) -> None:
    for procs in CgroupSet(sandbox_id).procs_files():
        for pid in Path(procs).read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


async def _statuses(client: AgentClient) -> dict[str, str]:
    resp = await client.list_sandboxes(pb.ListSandboxesRequest(), timeout_s=10)
    return {s.sandbox_id: s.status for s in resp.sandboxes}


async def test_capsule_events_pause_when_cp_unreachable_and_destroy_on_stop(
    cp: ControlPlane, minimal_rootfs: Path, traversable_dir: Path, tmp_path: Path
) -> None:
    agent = AgentProc(cp.url, traversable_dir / "agent", _free_port(), tmp_path / "agent.log")
    client = cp.agent_client(agent.port)
    sids = [ids.encode(ids.CAPSULE, uuid.uuid4()) for _ in range(2)]
    try:
        await _registered(cp, agent)
        await _rpc_list(cp, agent.port)
        for sid in sids:
            await client.create_sandbox(pb.CreateSandboxRequest(sandbox_id=sid, memory_mb=256), timeout_s=120)
        assert await _statuses(client) == {sids[0]: "running", sids[1]: "running"}

        # the first capsule dies on its own → the runtime's sandbox.error event reaches the CP (204)
        _kill_cgroup(sids[0])

        async def delivered() -> bool:
            return f"sandbox event sandbox.error for {sids[0]} delivered" in agent.output

        await _until(delivered, lambda: f"the sandbox.error event; log:\n{agent.output}")

        # the CP goes away: after 3 failed heartbeats every running capsule is paused
        await asyncio.to_thread(cp.stop)

        async def paused() -> bool:
            return (await _statuses(client)).get(sids[1]) == "paused"

        await _until(paused, lambda: f"capsules paused; log:\n{agent.output}")
        assert "pausing every sandbox" in agent.output

        # SIGTERM: the agent destroys its capsules before exiting
        assert await agent.terminate() == 0
        assert list((agent.data_dir / "capsules").iterdir()) == []
        assert not any(d.exists() for sid in sids for d in CgroupSet(sid).dirs())
    finally:
        agent.kill()
        await client.aclose()


# ---------------------------------------------------------------- embedded mode: spawn_local_agent


def _python(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


async def test_spawned_local_agent_registers_and_exits_with_its_parent(cp: ControlPlane, tmp_path: Path) -> None:
    host_id, token = await cp.new_host()
    data_dir, log, port = tmp_path / "local-agent", tmp_path / "local-agent.log", _free_port()
    script = (
        "import subprocess, sys, time\n"
        "from app.hostagent.agent import spawn_local_agent\n"
        f"proc = spawn_local_agent({cp.url!r}, {token!r}, {str(data_dir)!r}, {port},\n"
        f"    env={{'WRENN_HEARTBEAT_INTERVAL': '{HEARTBEAT}'}}, stdout=open({str(log)!r}, 'ab'),\n"
        "    stderr=subprocess.STDOUT)\n"
        "print(proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = _python(script)
    assert parent.stdout is not None
    child = psutil.Process(int(await asyncio.to_thread(parent.stdout.readline)))
    try:
        await _heartbeat_advances(cp, host_id)
        assert (data_dir / "host-credentials.json").exists()
        assert token not in " ".join(child.cmdline())  # the token travels in the environment
        assert list((await _rpc_list(cp, port)).sandboxes) == []

        parent.kill()  # the CP dies without stopping its agent
        await asyncio.to_thread(parent.wait)

        async def gone() -> bool:
            return not child.is_running() or child.status() == psutil.STATUS_ZOMBIE

        await _until(gone, lambda: f"the orphaned agent to stop; log:\n{log.read_text()}")
        assert "parent process" in log.read_text()
        assert (data_dir / "host-credentials.json").exists()  # not deleted: the host still exists
    finally:
        parent.kill()
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


async def test_run_agent_in_process_until_stop_event(cp: ControlPlane, tmp_path: Path) -> None:
    host_id, token = await cp.new_host()
    port, stop = _free_port(), asyncio.Event()
    task = asyncio.create_task(run_agent(cp.url, f"127.0.0.1:{port}", tmp_path / "inproc", token,
                                         stop_event=stop, heartbeat_interval=0.3))
    try:
        await _heartbeat_advances(cp, host_id)
        assert list((await _rpc_list(cp, port)).sandboxes) == []
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
    assert (tmp_path / "inproc" / "host-credentials.json").exists()
