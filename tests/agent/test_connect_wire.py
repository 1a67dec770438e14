"""Connect wire behaviour of a real agent server (uvicorn, real mTLS on 127.0.0.1).

The runtime here is ``HostDirRuntime``, a TEST-ONLY stand-in defined in this file: a "capsule" is a
temporary directory and commands run as plain host subprocesses inside it. It exists so the protocol
layer can be tested without BwrapRuntime; it provides no isolation and must never be used elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.hostagent import tls
from app.hostagent.client import AgentClient, AgentError
from app.hostagent.connect import ConnectClient, ConnectError
from app.hostagent.proto import hostagent_pb2 as pb
from app.hostagent.runtime.base import (
    CreateSpec,
    ExecEvent,
    ExecResult,
    FileInfo,
    InvalidArgument,
    PathNotFound,
    SandboxInfo,
    SandboxNotFound,
)
from app.hostagent.server import AgentThread, build_agent_app

SVC = "/hostagent.v1.HostAgentService"


# ---------------------------------------------------------------- test-only runtime


class HostDirRuntime:
    """Test double: capsules are temp dirs, processes are host subprocesses. No isolation."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="agent-test-"))
        self.boxes: dict[str, SandboxInfo] = {}
        self.auto_paused: list[str] = []
        self.cancelled_streams = 0
        self.shutdown_called = False
        self.proxy_ports: dict[str, int] = {}

    def _root(self, sid: str) -> Path:
        if sid not in self.boxes:
            raise SandboxNotFound(f"sandbox not found: {sid}")
        return self.base / sid

    def _path(self, sid: str, path: str) -> Path:
        root = self._root(sid)
        full = (root / path.lstrip("/")).resolve()
        if not full.is_relative_to(root):
            raise InvalidArgument("path escapes the capsule")
        return full

    async def create(self, spec: CreateSpec) -> SandboxInfo:
        (self.base / spec.sandbox_id).mkdir()
        now = int(time.time())
        info = SandboxInfo(
            spec.sandbox_id, "running", "127.0.0.1", spec.vcpus, spec.memory_mb, spec.timeout_sec,
            spec.team_id, spec.template_id, now, now, spec.disk_size_mb, {"vmm_version": "test"},
        )  # fmt: skip
        self.boxes[spec.sandbox_id] = info
        return info

    async def destroy(self, sandbox_id: str) -> None:
        shutil.rmtree(self._root(sandbox_id))
        del self.boxes[sandbox_id]

    async def ping(self, sandbox_id: str) -> None:
        self._root(sandbox_id)

    async def list_sandboxes(self) -> list[SandboxInfo]:
        return list(self.boxes.values())

    def drain_auto_paused(self) -> list[str]:
        out, self.auto_paused = self.auto_paused, []
        return out

    async def shutdown(self) -> None:
        self.shutdown_called = True

    async def exec(
        self, sandbox_id: str, cmd: str, args: list[str], timeout_sec: int, envs: dict[str, str], cwd: str
    ) -> ExecResult:
        proc = await asyncio.create_subprocess_exec(
            cmd, *args, cwd=self._root(sandbox_id), env={**os.environ, **envs},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await proc.communicate()
        finally:
            if proc.returncode is None:  # cancelled (deadline): don't leave the child behind
                proc.kill()
                await proc.wait()
        return ExecResult(out, err, proc.returncode or 0)

    async def exec_stream(
        self, sandbox_id: str, cmd: str, args: list[str], timeout_sec: int
    ) -> AsyncIterator[ExecEvent]:
        proc = await asyncio.create_subprocess_exec(
            cmd, *args, cwd=self._root(sandbox_id), stdout=asyncio.subprocess.PIPE
        )
        try:
            yield ExecEvent("start", pid=proc.pid)
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(4096):
                yield ExecEvent("stdout", data=chunk)
            yield ExecEvent("end", exit_code=await proc.wait())
        finally:
            if proc.returncode is None:
                self.cancelled_streams += 1
                proc.kill()
                await proc.wait()

    async def write_file(self, sandbox_id: str, path: str, content: bytes) -> None:
        full = self._path(sandbox_id, path)
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(content)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        full = self._path(sandbox_id, path)
        if not full.exists():
            raise PathNotFound(f"no such file: {path}")
        return full.read_bytes()

    async def write_file_stream(self, sandbox_id: str, path: str, chunks: AsyncIterator[bytes]) -> None:
        full = self._path(sandbox_id, path)
        with full.open("wb") as fh:
            async for chunk in chunks:
                fh.write(chunk)

    async def read_file_stream(self, sandbox_id: str, path: str) -> AsyncIterator[bytes]:
        # One big piece on purpose: the RPC layer must split it into <= 64 KiB messages.
        yield await self.read_file(sandbox_id, path)

    async def list_dir(self, sandbox_id: str, path: str, depth: int) -> list[FileInfo]:
        full = self._path(sandbox_id, path)
        return [
            FileInfo(p.name, str(p), "file", p.stat().st_size, 0o644, "-rw-r--r--", "u", "g", 0)
            for p in sorted(full.iterdir())
        ]

    async def get_metrics(self, sandbox_id: str, range_: str) -> list:
        self._root(sandbox_id)
        return []

    async def template_size(self, team_id: str, template_id: str) -> int:
        raise NotImplementedError("no templates in the test runtime")

    def proxy_target(self, sandbox_id: str, port: int) -> tuple[str, int]:
        self._root(sandbox_id)
        return "127.0.0.1", port


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ca() -> tls.CertificateAuthority:
    return tls.generate_ca()


@pytest.fixture(scope="module")
def runtime() -> HostDirRuntime:
    return HostDirRuntime()


@pytest.fixture(scope="module")
def terminated() -> list[float]:
    return []


@pytest.fixture(scope="module")
def agent(ca: tls.CertificateAuthority, runtime: HostDirRuntime, terminated: list[float]) -> AgentThread:
    async def on_terminate() -> None:
        terminated.append(time.monotonic())

    host = tls.issue_host_cert(ca, "host-test", "127.0.0.1:50051")
    server_tls = tls.ServerTLS(host.cert_pem, host.key_pem, host.ca_cert_pem)
    thread = AgentThread(build_agent_app(runtime, on_terminate), server_tls.context).start()
    yield thread
    thread.stop()
    shutil.rmtree(runtime.base, ignore_errors=True)


@pytest.fixture(scope="module")
def certs(ca: tls.CertificateAuthority) -> tls.ClientCertHolder:
    return tls.ClientCertHolder(ca)


@pytest.fixture
async def client(agent: AgentThread, certs: tls.ClientCertHolder) -> AsyncIterator[AgentClient]:
    c = AgentClient(agent.address, certs)
    yield c
    await c.aclose()


@pytest.fixture
async def raw(agent: AgentThread, certs: tls.ClientCertHolder) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"https://{agent.address}", verify=certs()) as http:
        yield http


@pytest.fixture
async def sandbox(client: AgentClient) -> str:
    sid = "cl-" + os.urandom(8).hex()
    await client.create_sandbox(pb.CreateSandboxRequest(sandbox_id=sid, vcpus=1, memory_mb=256))
    return sid


def envelopes(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    while body:
        flags, size = struct.unpack(">BI", body[:5])
        out.append((flags, body[5 : 5 + size]))
        body = body[5 + size :]
    return out


# ---------------------------------------------------------------- unary


async def test_unary_roundtrip_and_list(client: AgentClient, runtime: HostDirRuntime, sandbox: str) -> None:
    res = await client.exec(
        pb.ExecRequest(sandbox_id=sandbox, cmd="/bin/sh", args=["-c", "echo out; echo err >&2; exit 3"])
    )
    assert (res.stdout, res.stderr, res.exit_code) == (b"out\n", b"err\n", 3)
    runtime.auto_paused.append("cl-paused")
    listed = await client.list_sandboxes()
    assert sandbox in [s.sandbox_id for s in listed.sandboxes]
    assert list(listed.auto_paused_sandbox_ids) == ["cl-paused"]
    assert list((await client.list_sandboxes()).auto_paused_sandbox_ids) == []  # drained on read


async def test_unary_defaults_and_validation(client: AgentClient) -> None:
    created = await client.create_sandbox(pb.CreateSandboxRequest(timeout_sec=5))
    assert created.sandbox_id.startswith("cl-") and len(created.sandbox_id) == 28
    assert created.metadata["vmm_version"] == "test"
    with pytest.raises(AgentError) as exc:
        await client.create_sandbox(pb.CreateSandboxRequest(sandbox_id="cl-bad", team_id="not-a-uuid"))
    assert exc.value.code == "invalid_argument"


async def test_unary_error_json_and_status(raw: httpx.AsyncClient, client: AgentClient) -> None:
    body = pb.PingSandboxRequest(sandbox_id="cl-missing").SerializeToString()
    resp = await raw.post(f"{SVC}/PingSandbox", content=body, headers={"content-type": "application/proto"})
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"code": "not_found", "message": "sandbox not found: cl-missing"}
    with pytest.raises(AgentError) as exc:
        await client.ping_sandbox(pb.PingSandboxRequest(sandbox_id="cl-missing"))
    assert (exc.value.code, exc.value.message) == ("not_found", "sandbox not found: cl-missing")
    with pytest.raises(AgentError) as exc:
        await client.get_template_size(pb.GetTemplateSizeRequest())
    assert exc.value.code == "unimplemented"


async def test_unary_json_codec(raw: httpx.AsyncClient, sandbox: str) -> None:
    resp = await raw.post(
        f"{SVC}/Exec",
        content=json.dumps({"sandboxId": sandbox, "cmd": "/bin/echo", "args": ["hi"]}),
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    assert resp.json()["stdout"] == "aGkK"  # base64 of b"hi\n"


async def test_protocol_errors_404_405_415(raw: httpx.AsyncClient) -> None:
    proto = {"content-type": "application/proto"}
    assert (await raw.post(f"{SVC}/NoSuchMethod", content=b"", headers=proto)).status_code == 404
    assert (await raw.post("/hostagent.v1.Other/Exec", content=b"", headers=proto)).status_code == 404
    assert (await raw.get("/")).status_code == 404
    assert (await raw.get(f"{SVC}/Exec")).status_code == 405
    assert (await raw.post(f"{SVC}/Exec", content=b"", headers={"content-type": "text/plain"})).status_code == 415
    # A unary method does not accept the streaming content type, and vice versa.
    stream_ct = {"content-type": "application/connect+proto"}
    assert (await raw.post(f"{SVC}/Exec", content=b"", headers=stream_ct)).status_code == 415
    assert (await raw.post(f"{SVC}/ExecStream", content=b"", headers=proto)).status_code == 415


async def test_connect_timeout_ms(raw: httpx.AsyncClient, client: AgentClient, sandbox: str) -> None:
    req = pb.ExecRequest(sandbox_id=sandbox, cmd="/bin/sleep", args=["5"]).SerializeToString()
    started = time.monotonic()
    resp = await raw.post(
        f"{SVC}/Exec", content=req, headers={"content-type": "application/proto", "connect-timeout-ms": "200"}
    )
    assert resp.status_code == 504 and resp.json()["code"] == "deadline_exceeded"
    assert time.monotonic() - started < 3
    bad = await raw.post(
        f"{SVC}/Exec", content=req, headers={"content-type": "application/proto", "connect-timeout-ms": "12345678901"}
    )
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_argument"
    with pytest.raises(AgentError) as exc:
        await client.exec(pb.ExecRequest(sandbox_id=sandbox, cmd="/bin/sleep", args=["5"]), timeout_s=0.3)
    assert exc.value.code == "deadline_exceeded"


async def test_transport_failure_is_unavailable(certs: tls.ClientCertHolder) -> None:
    c = AgentClient("127.0.0.1:1", certs)
    with pytest.raises(AgentError) as exc:
        await c.list_sandboxes()
    assert exc.value.code == "unavailable"
    await c.aclose()


async def test_terminate_answers_then_shuts_down(
    client: AgentClient, runtime: HostDirRuntime, terminated: list[float]
) -> None:
    before = time.monotonic()
    await client.terminate()
    for _ in range(100):
        if terminated:
            break
        await asyncio.sleep(0.01)
    assert terminated and terminated[0] >= before
    assert runtime.shutdown_called


# ---------------------------------------------------------------- server streaming


async def test_exec_stream_raw_envelopes(raw: httpx.AsyncClient, sandbox: str) -> None:
    msg = pb.ExecStreamRequest(sandbox_id=sandbox, cmd="/bin/sh", args=["-c", "echo hi"]).SerializeToString()
    body = struct.pack(">BI", 0, len(msg)) + msg
    resp = await raw.post(f"{SVC}/ExecStream", content=body, headers={"content-type": "application/connect+proto"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/connect+proto"
    frames = envelopes(resp.content)
    assert frames[-1] == (2, b"{}")
    events = [pb.ExecStreamResponse.FromString(p) for f, p in frames[:-1]]
    assert [e.WhichOneof("event") for e in events] == ["start", "data", "end"]
    assert events[1].data.stdout == b"hi\n"
    assert frames[-2][1] == b"\x1a\x00"  # end with exit code 0 is an empty, present member


async def test_exec_stream_is_incremental(client: AgentClient, sandbox: str) -> None:
    req = pb.ExecStreamRequest(sandbox_id=sandbox, cmd="/bin/sh", args=["-c", "echo a; sleep 0.6; echo b"])
    started = time.monotonic()
    seen: list[tuple[str, float]] = []
    async for ev in client.exec_stream(req):
        seen.append((ev.WhichOneof("event"), time.monotonic() - started))
    kinds = [k for k, _ in seen]
    assert kinds == ["start", "data", "data", "end"]
    assert seen[1][1] < 0.5 <= seen[2][1]  # "a" arrived well before "b" was printed


async def test_stream_error_in_end_of_stream(raw: httpx.AsyncClient, client: AgentClient) -> None:
    msg = pb.ExecStreamRequest(sandbox_id="cl-missing", cmd="/bin/true").SerializeToString()
    resp = await raw.post(
        f"{SVC}/ExecStream",
        content=struct.pack(">BI", 0, len(msg)) + msg,
        headers={"content-type": "application/connect+proto"},
    )
    assert resp.status_code == 200
    ((flags, payload),) = envelopes(resp.content)
    assert flags == 2
    assert json.loads(payload) == {"error": {"code": "not_found", "message": "sandbox not found: cl-missing"}}
    with pytest.raises(AgentError) as exc:
        async for _ in client.exec_stream(pb.ExecStreamRequest(sandbox_id="cl-missing", cmd="/bin/true")):
            pass
    assert exc.value.code == "not_found"


async def test_client_disconnect_stops_stream(client: AgentClient, runtime: HostDirRuntime, sandbox: str) -> None:
    before = runtime.cancelled_streams
    req = pb.ExecStreamRequest(sandbox_id=sandbox, cmd="/bin/sleep", args=["30"])
    stream = client.exec_stream(req)
    first = await anext(stream)
    assert first.WhichOneof("event") == "start"
    await stream.aclose()  # closes the HTTP response → the agent cancels the handler
    for _ in range(200):
        if runtime.cancelled_streams > before:
            break
        await asyncio.sleep(0.01)
    assert runtime.cancelled_streams == before + 1


async def test_read_file_stream_chunks(client: AgentClient, sandbox: str) -> None:
    data = os.urandom(200_000)
    await client.write_file(pb.WriteFileRequest(sandbox_id=sandbox, path="/big.bin", content=data))
    chunks = [
        m.chunk async for m in client.read_file_stream(pb.ReadFileStreamRequest(sandbox_id=sandbox, path="/big.bin"))
    ]
    assert b"".join(chunks) == data
    assert len(chunks) == 4 and max(len(c) for c in chunks) == 64 * 1024


# ---------------------------------------------------------------- client streaming


async def test_write_file_stream(client: AgentClient, sandbox: str) -> None:
    parts = [os.urandom(64 * 1024) for _ in range(20)] + [b"", b"tail"]

    async def messages() -> AsyncIterator[pb.WriteFileStreamRequest]:
        yield pb.WriteFileStreamRequest(meta=pb.WriteFileStreamMeta(sandbox_id=sandbox, path="/up.bin"))
        for p in parts:
            yield pb.WriteFileStreamRequest(chunk=p)

    await client.write_file_stream(messages())
    got = await client.read_file(pb.ReadFileRequest(sandbox_id=sandbox, path="/up.bin"))
    assert got.content == b"".join(parts)


async def test_write_file_stream_errors(client: AgentClient, raw: httpx.AsyncClient) -> None:
    async def no_meta() -> AsyncIterator[pb.WriteFileStreamRequest]:
        yield pb.WriteFileStreamRequest(chunk=b"x")

    async def empty() -> AsyncIterator[pb.WriteFileStreamRequest]:
        return
        yield  # pragma: no cover

    for gen in (no_meta(), empty()):
        with pytest.raises(AgentError) as exc:
            await client.write_file_stream(gen)
        assert exc.value.code == "invalid_argument"
    # On the wire: HTTP 200 and only the end-of-stream envelope.
    resp = await raw.post(f"{SVC}/WriteFileStream", content=b"", headers={"content-type": "application/connect+proto"})
    assert resp.status_code == 200
    ((flags, payload),) = envelopes(resp.content)
    assert flags == 2 and json.loads(payload)["error"]["code"] == "invalid_argument"


async def test_write_file_stream_unknown_sandbox(client: AgentClient) -> None:
    async def msgs() -> AsyncIterator[pb.WriteFileStreamRequest]:
        yield pb.WriteFileStreamRequest(meta=pb.WriteFileStreamMeta(sandbox_id="cl-missing", path="/f"))
        yield pb.WriteFileStreamRequest(chunk=b"data")

    with pytest.raises(AgentError) as exc:
        await client.write_file_stream(msgs())
    assert exc.value.code == "not_found"


# ---------------------------------------------------------------- client edge cases (no server needed)


class _Body(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


async def test_client_requires_end_of_stream() -> None:
    start = pb.ExecStreamResponse(start=pb.ExecStreamStart(pid=1)).SerializeToString()

    def truncated(request: httpx.Request) -> httpx.Response:
        body = struct.pack(">BI", 0, len(start)) + start  # no end-of-stream envelope
        return httpx.Response(200, stream=_Body(body), headers={"content-type": "application/connect+proto"})

    def bad_json(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, content=b"upstream down")

    async with httpx.AsyncClient(transport=httpx.MockTransport(truncated)) as http:
        rpc = ConnectClient(http, "http://agent", "hostagent.v1.HostAgentService")
        with pytest.raises(ConnectError) as exc:
            async for _ in rpc.server_stream("ExecStream", pb.ExecStreamRequest(), pb.ExecStreamResponse):
                pass
        assert exc.value.code == "unavailable"
    async with httpx.AsyncClient(transport=httpx.MockTransport(bad_json)) as http:
        rpc = ConnectClient(http, "http://agent", "hostagent.v1.HostAgentService")
        with pytest.raises(ConnectError) as exc:
            await rpc.unary("Exec", pb.ExecRequest(), pb.ExecResponse)
        assert exc.value.code == "unavailable"  # 503 without JSON → inferred from the status
