"""One command, one table: ``.venv/bin/python -m bench.run``.

Starts the real platform (``wrenn-cp serve`` with embedded Postgres/Redis and its local agent) in a
temporary data dir, then measures each figure beside its floor (the same work done directly against
the agent, or a bare endpoint) and prints the ratio. Nothing here is asserted: these are numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.core import ids
from app.core.embedded import free_port
from app.hostagent.client import AgentClient
from app.hostagent.proto import hostagent_pb2 as pb
from app.hostagent.tls import ClientCertHolder, load_ca

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    name: str
    value: str
    floor: str
    ratio: str
    target: str


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class Platform:
    def __init__(self, data_dir: Path, warm_pool: int = 0) -> None:
        self.data_dir = data_dir
        self.warm_pool = warm_pool
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "WRENN_"))}
        env["WRENN_BENCH_ENDPOINTS"] = "1"
        env["WRENN_WARM_POOL"] = str(self.warm_pool)
        env["LOG_LEVEL"] = "warning"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port),
             "--host", "127.0.0.1"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=open(self.data_dir.parent / "cp.log", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200 and \
                        (self.data_dir / "bootstrap.json").exists():
                    return dict(json.loads((self.data_dir / "bootstrap.json").read_text()))
            time.sleep(0.2)
        raise RuntimeError("platform did not start; see cp.log")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(120)


async def wait_host(api: httpx.AsyncClient) -> None:
    for _ in range(600):
        r = await api.post("/v1/capsules", json={"memory_mb": 128})
        if r.status_code == 202:
            await api.delete(f"/v1/capsules/{r.json()['id']}")
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("no host came online")


async def create_running(api: httpx.AsyncClient, memory_mb: int) -> tuple[str, float]:
    started = time.perf_counter()
    r = await api.post("/v1/capsules", json={"memory_mb": memory_mb})
    r.raise_for_status()
    capsule_id = r.json()["id"]
    while True:
        status = (await api.get(f"/v1/capsules/{capsule_id}")).json()["status"]
        if status == "running":
            return capsule_id, (time.perf_counter() - started) * 1000
        if status in ("error", "stopped"):
            raise RuntimeError(f"capsule {capsule_id} ended in {status}")
        await asyncio.sleep(0.005)


async def bench_create(api: httpx.AsyncClient, agent: AgentClient, n: int, concurrency: int) -> dict[str, float]:
    times: list[float] = []
    made: list[str] = []
    for start in range(0, n, concurrency):
        batch = await asyncio.gather(*(create_running(api, 256) for _ in range(min(concurrency, n - start))))
        made += [c for c, _ in batch]
        times += [t for _, t in batch]
        await asyncio.gather(*(api.delete(f"/v1/capsules/{c}") for c in made[-len(batch):]))
        await asyncio.sleep(0.5)
    return {"p50": pct(times, 50), "p99": pct(times, 99)}


async def agent_create_floor(agent: AgentClient, n: int, concurrency: int) -> dict[str, float]:
    times: list[float] = []

    async def one() -> tuple[str, float]:
        ref = ids.encode(ids.CAPSULE, ids.new_uuid())
        req = pb.CreateSandboxRequest(sandbox_id=ref, vcpus=1, memory_mb=256, template="minimal",
                                      team_id=str(ids.ZERO_UUID), template_id=str(ids.ZERO_UUID))
        started = time.perf_counter()
        await agent.create_sandbox(req)
        return ref, (time.perf_counter() - started) * 1000

    for start in range(0, n, concurrency):
        batch = await asyncio.gather(*(one() for _ in range(min(concurrency, n - start))))
        times += [t for _, t in batch]
        await asyncio.gather(*(agent.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id=r)) for r, _ in batch))
    return {"p50": pct(times, 50), "p99": pct(times, 99)}


async def timed(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


async def throughput(fn: Callable[[], Awaitable[Any]], seconds: float, workers: int) -> float:
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await fn()
            count += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return count / seconds


def sdk_exec_times(url: str, key: str, capsule_id: str, n: int) -> list[float] | None:
    """Exec round trips measured inside the official SDK (its own Python 3.13 venv), if present."""
    python = ROOT / ".sdk-venv" / "bin" / "python"
    if not python.exists():
        return None
    code = (
        "import json,sys,time\nfrom wrenn import Capsule\n"
        f"c = Capsule.connect({capsule_id!r})\nc.commands.run('echo hi')\nout=[]\n"
        f"for _ in range({n}):\n  t=time.perf_counter(); c.commands.run('echo hi'); "
        "out.append((time.perf_counter()-t)*1000)\nprint(json.dumps(out))\n"
    )
    env = dict(os.environ, WRENN_BASE_URL=url, WRENN_API_KEY=key)
    done = subprocess.run([str(python), "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return None
    return [float(x) for x in json.loads(done.stdout.strip().splitlines()[-1])]


async def stream_mb_s(chunks: AsyncIterator[bytes]) -> float:
    size, started = 0, time.perf_counter()
    async for chunk in chunks:
        size += len(chunk)
    return size / (1024 * 1024) / (time.perf_counter() - started)


async def main_async(args: argparse.Namespace) -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="wrenn-bench-"))
    os.chmod(root, 0o711)
    platform = Platform(root / "data", args.warm_pool)
    boot = platform.start()
    rows: list[Row] = []
    try:
        secrets = json.loads((platform.data_dir / "secrets.json").read_text())
        holder = ClientCertHolder(load_ca(secrets["ca_cert"], secrets["ca_key"]))
        headers = {"X-API-Key": boot["api_key"]}
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=platform.url, headers=headers, timeout=120, limits=limits) as api:
            await wait_host(api)
            meta = json.loads((platform.data_dir / "agent" / "local-agent.json").read_text())
            agent = AgentClient(f"127.0.0.1:{meta['port']}", holder)
            rows += await create_rows(api, agent, args)
            rows += await exec_rows(api, agent, platform.url, boot["api_key"], args)
            rows += await get_rows(api, args)
            rows += await stream_rows(api, agent, args)
        await agent.aclose()
    finally:
        platform.stop()
        shutil.rmtree(root, ignore_errors=True)
    return rows


async def create_rows(api: httpx.AsyncClient, agent: AgentClient, args: argparse.Namespace) -> list[Row]:
    rows = []
    settle = 8.0 if args.warm_pool else 0.0  # let the agent refill its warm pool between phases
    for concurrency, n in ((1, args.creates), (50, max(args.creates, 50))):
        await asyncio.sleep(settle)
        floor = await agent_create_floor(agent, n, concurrency)
        await asyncio.sleep(settle)
        ours = await bench_create(api, agent, n, concurrency)
        target = "p50 ≤ 60 ms, p99 ≤ 150 ms" if concurrency == 50 else ""
        pool = f", warm pool {args.warm_pool}" if args.warm_pool else ""
        rows.append(Row(f"create→running @{concurrency}{pool} (p50 / p99 ms)", f"{ours['p50']:.1f} / {ours['p99']:.1f}",
                        f"{floor['p50']:.1f} / {floor['p99']:.1f}",
                        f"{floor['p50'] / ours['p50']:.2f} / {floor['p99'] / ours['p99']:.2f}", target))
    return rows


async def exec_rows(api: httpx.AsyncClient, agent: AgentClient, url: str, key: str,
                    args: argparse.Namespace) -> list[Row]:
    capsule_id, _ = await create_running(api, 256)
    try:
        req = pb.ExecRequest(sandbox_id=capsule_id, cmd="/bin/sh", args=["-c", "echo hi"], timeout_sec=30)
        direct = await timed(lambda: agent.exec(req), args.execs)
        body = {"cmd": "/bin/sh", "args": ["-c", "echo hi"], "timeout_sec": 30, "envs": {}}
        http = await timed(lambda: api.post(f"/v1/capsules/{capsule_id}/exec", json=body), args.execs)
        sdk = sdk_exec_times(url, key, capsule_id, args.execs)
        measured, label = (sdk, "SDK") if sdk else (http, "HTTP (no SDK venv)")
        p50, floor = pct(measured, 50), pct(direct, 50)
        return [Row(f"exec `echo hi` via {label} (p50 ms)", f"{p50:.1f}", f"{floor:.1f} (agent RPC)",
                    f"{floor / p50:.2f}", "p50 ≤ 15 ms")]
    finally:
        await api.delete(f"/v1/capsules/{capsule_id}")


async def get_rows(api: httpx.AsyncClient, args: argparse.Namespace) -> list[Row]:
    capsule_id, _ = await create_running(api, 256)
    try:
        ours = await throughput(lambda: api.get(f"/v1/capsules/{capsule_id}"), args.seconds, 32)
        floor = await throughput(lambda: api.get(f"/v1/_bench/floor/{capsule_id}"), args.seconds, 32)
        return [Row("GET /v1/capsules/{id} (req/s)", f"{ours:.0f}", f"{floor:.0f} (bare indexed query)",
                    f"{ours / floor:.2f}", "≥ 0.7")]
    finally:
        await api.delete(f"/v1/capsules/{capsule_id}")


async def stream_rows(api: httpx.AsyncClient, agent: AgentClient, args: argparse.Namespace) -> list[Row]:
    capsule_id, _ = await create_running(api, 512)
    rows = []
    try:
        size_mb = args.stream_mb
        make = f"head -c {size_mb}M /dev/zero > /tmp/blob"
        await api.post(f"/v1/capsules/{capsule_id}/exec", json={"cmd": "/bin/sh", "args": ["-c", make]})

        async def via_cp() -> AsyncIterator[bytes]:
            async with api.stream("POST", f"/v1/capsules/{capsule_id}/files/stream/read",
                                  json={"path": "/tmp/blob"}) as resp:
                async for chunk in resp.aiter_raw():
                    yield chunk

        async def direct() -> AsyncIterator[bytes]:
            async for msg in agent.read_file_stream(pb.ReadFileStreamRequest(sandbox_id=capsule_id, path="/tmp/blob")):
                yield msg.chunk

        ours, floor = await stream_mb_s(via_cp()), await stream_mb_s(direct())
        rows.append(Row("file-stream download (MB/s)", f"{ours:.0f}", f"{floor:.0f} (agent RPC)",
                        f"{ours / floor:.2f}", "≥ 0.8"))
        rows += await exec_stream_rows(api, agent, capsule_id, size_mb)
    finally:
        await api.delete(f"/v1/capsules/{capsule_id}")
    return rows


async def exec_stream_rows(api: httpx.AsyncClient, agent: AgentClient, capsule_id: str, size_mb: int) -> list[Row]:
    import websockets

    command = f"head -c {size_mb}M /dev/zero | tr '\\0' 'a'"
    ws_url = str(api.base_url).replace("http://", "ws://").rstrip("/") + f"/v1/capsules/{capsule_id}/exec/stream"

    async def via_cp() -> AsyncIterator[bytes]:
        async with websockets.connect(ws_url, additional_headers={"X-API-Key": api.headers["X-API-Key"]},
                                      max_size=None) as ws:
            await ws.send(json.dumps({"type": "start", "cmd": "/bin/sh", "args": ["-c", command]}))
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("type") in ("stdout", "stderr"):
                    yield msg["data"].encode()
                elif msg.get("type") in ("exit", "error"):
                    return

    async def direct() -> AsyncIterator[bytes]:
        req = pb.ExecStreamRequest(sandbox_id=capsule_id, cmd="/bin/sh", args=["-c", command])
        async for event in agent.exec_stream(req):
            if event.HasField("data"):
                yield event.data.stdout or event.data.stderr

    try:
        ours = await stream_mb_s(via_cp())
    except Exception as exc:  # the route may not exist yet in this build
        return [Row("exec-stream (MB/s)", f"n/a ({type(exc).__name__})", "", "", "≥ 0.8")]
    floor = await stream_mb_s(direct())
    return [Row("exec-stream stdout (MB/s)", f"{ours:.0f}", f"{floor:.0f} (agent RPC)", f"{ours / floor:.2f}",
                "≥ 0.8")]


def render(rows: list[Row]) -> str:
    headers = ("measure", "through the control plane", "floor", "ratio", "target")
    table = [headers, *[(r.name, r.value, r.floor, r.ratio, r.target) for r in rows]]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(headers))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--creates", type=int, default=30, help="capsules per create measurement")
    parser.add_argument("--execs", type=int, default=100, help="exec round trips")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of the GET throughput runs")
    parser.add_argument("--stream-mb", type=int, default=64, help="size of the streamed payloads")
    parser.add_argument("--warm-pool", type=int, default=0,
                        help="WRENN_WARM_POOL for the agent (pre-booted capsules; 0 = boot on demand)")
    args = parser.parse_args()
    print(render(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
