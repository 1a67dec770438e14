"""BwrapRuntime functional tests: real capsules, real processes (needs root; see conftest)."""
# ruff: noqa: ASYNC109, ASYNC221, ASYNC240  (tests inspect the host synchronously on purpose)

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.hostagent.runtime import _net
from app.hostagent.runtime.base import (
    AlreadyExists,
    CreateSpec,
    DeadlineExceeded,
    ExecEvent,
    FailedPrecondition,
    InvalidArgument,
    PathNotFound,
    ProcessNotFound,
    PtyEvent,
    SandboxNotFound,
)
from app.hostagent.runtime.bwrap import BwrapRuntime

pytestmark = pytest.mark.timeout(60)


async def sh(rt: BwrapRuntime, sid: str, script: str, **kw: object) -> tuple[int, str, str]:
    r = await rt.exec(sid, "/bin/sh", ["-c", script], int(kw.get("timeout", 20)),  # type: ignore[call-overload]
                      dict(kw.get("envs", {})), str(kw.get("cwd", "")))  # type: ignore[call-overload]
    return r.exit_code, r.stdout.decode(), r.stderr.decode()


# ---------------------------------------------------------------- lifecycle
async def test_create_exec_destroy_leaves_nothing(bwrap_rt: BwrapRuntime) -> None:
    sid = "cl-life" + os.urandom(4).hex()
    info = await bwrap_rt.create(CreateSpec(sandbox_id=sid, team_id="", template_id=""))
    assert info.status == "running" and info.host_ip.startswith("10.200.")
    cap = bwrap_rt._caps[sid]
    init_pid, cap_dir, cg_dirs = cap.init_pid, cap.dir, cap.cg.dirs()
    ifname = _net.host_ifname(cap.slot)
    code, out, _ = await sh(bwrap_rt, sid, "sleep 300 & echo started")
    assert code == 0 and "started" in out
    await bwrap_rt.start_background(sid, "sleep", ["300"], "bg", {}, "")
    assert _net.link_exists(ifname) and cap_dir.exists() and all(d.exists() for d in cg_dirs)
    pids = cap.cg.pids()
    assert len(pids) >= 3

    await bwrap_rt.destroy(sid)
    assert sid not in [s.sandbox_id for s in await bwrap_rt.list_sandboxes()]
    assert not [p for p in [init_pid, *pids] if Path(f"/proc/{p}").exists()]
    assert not any(d.exists() for d in cg_dirs)
    assert not cap_dir.exists()
    assert not _net.link_exists(ifname)
    assert str(cap_dir) not in Path("/proc/self/mountinfo").read_text()
    with pytest.raises(SandboxNotFound):
        await bwrap_rt.exec(sid, "true", [], 5, {}, "")


async def test_identity_user_sudo_hostname(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    code, out, err = await sh(bwrap_rt, capsule, "id -u; id -un; echo $HOME; pwd; echo $PATH; sudo whoami; hostname")
    lines = out.splitlines()
    assert code == 0, err
    assert lines[:4] == ["1000", "wrenn-user", "/home/wrenn-user", "/home/wrenn-user"]
    assert "/usr/bin" in lines[4].split(":")
    assert lines[5] == "root"
    assert lines[6] == capsule
    code, out, _ = await sh(bwrap_rt, capsule, "git --version && python3 -c 'print(42)' && sudo cat /etc/shadow")
    assert code == 0 and "git version 2." in out and "42" in out and "root:" in out


async def test_list_ping_pause_resume_info(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    await bwrap_rt.ping(capsule)
    await bwrap_rt.pause(capsule)
    assert {s.sandbox_id: s.status for s in await bwrap_rt.list_sandboxes()}[capsule] == "paused"
    with pytest.raises(FailedPrecondition):
        await bwrap_rt.exec(capsule, "true", [], 5, {}, "")
    with pytest.raises(FailedPrecondition):
        await bwrap_rt.ping(capsule)
    info = await bwrap_rt.resume(capsule, 0, "", {"FROM_RESUME": "yes"})
    assert info.status == "running"
    assert (await sh(bwrap_rt, capsule, 'echo "$FROM_RESUME"'))[1] == "yes\n"


# ---------------------------------------------------------------- exec
async def test_exec_env_cwd_exit_code(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    code, out, _ = await sh(bwrap_rt, capsule, 'printf "%s" "$X"', envs={"X": "a b&c|d;e"})
    assert (code, out) == (0, "a b&c|d;e")
    assert (await sh(bwrap_rt, capsule, 'printf "%s" "${X-unset}"'))[1] == "unset"  # nothing leaks
    assert (await sh(bwrap_rt, capsule, "exit 42"))[0] == 42
    assert (await sh(bwrap_rt, capsule, "pwd", cwd="/tmp"))[1] == "/tmp\n"
    await sh(bwrap_rt, capsule, "mkdir -p sub/dir")
    assert (await sh(bwrap_rt, capsule, "pwd", cwd="sub/dir"))[1] == "/home/wrenn-user/sub/dir\n"
    assert (await sh(bwrap_rt, capsule, "cd /tmp; pwd"))[1] == "/tmp\n"
    assert (await sh(bwrap_rt, capsule, "pwd"))[1] == "/home/wrenn-user\n"  # cd does not persist
    with pytest.raises(InvalidArgument):
        await sh(bwrap_rt, capsule, "pwd", cwd="/does/not/exist")
    r = await bwrap_rt.exec(capsule, "/bin/sh", ["-c", "printf '\\377\\000x'"], 5, {}, "")
    assert r.stdout == b"\xff\x00x"


async def test_exec_timeout(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(DeadlineExceeded):
        await bwrap_rt.exec(capsule, "/bin/sh", ["-c", "sleep 20"], 1, {}, "")
    assert loop.time() - t0 < 5
    await asyncio.sleep(0.2)
    _, out, _ = await sh(bwrap_rt, capsule, "ps -eo args")
    assert "sleep 20" not in out  # the timed-out job was killed


async def test_exec_stream_order_and_liveness(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    loop = asyncio.get_running_loop()
    events: list[tuple[float, ExecEvent]] = []
    script = "echo one; sleep 0.4; echo two >&2; sleep 0.4; echo three; exit 3"
    async for ev in bwrap_rt.exec_stream(capsule, "/bin/sh", ["-c", script], 0):
        events.append((loop.time(), ev))
    kinds = [e.kind for _, e in events]
    assert kinds[0] == "start" and events[0][1].pid > 0
    assert kinds[-1] == "end" and events[-1][1].exit_code == 3
    data = [(e.kind, e.data) for _, e in events if e.kind in ("stdout", "stderr")]
    assert data == [("stdout", b"one\n"), ("stderr", b"two\n"), ("stdout", b"three\n")]
    # streamed as produced, not buffered until exit
    assert events[-1][0] - events[1][0] > 0.6


# ---------------------------------------------------------------- background processes
async def test_background_list_connect_kill(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    pid = await bwrap_rt.start_background(
        capsule, "/bin/sh",
        ["-c", 'echo "hello $WHO from $(pwd)"; i=0; while :; do echo tick$i; i=$((i+1)); sleep 0.1; done'],
        "worker", {"WHO": "bg"}, "/tmp")
    assert pid > 0
    await asyncio.sleep(0.5)
    procs = await bwrap_rt.list_processes(capsule)
    assert [(p.pid, p.tag) for p in procs] == [(pid, "worker")]
    _, out, _ = await sh(bwrap_rt, capsule, f"cat /proc/{pid}/cmdline | tr '\\0' ' '")
    assert "while" in out  # the reported pid is the capsule-side pid

    got: list[ExecEvent] = []
    stream: AsyncIterator[ExecEvent] = bwrap_rt.connect_process(capsule, None, "worker")
    async for ev in stream:
        got.append(ev)
        if sum(1 for e in got if e.kind == "stdout" and b"tick" in e.data) >= 8:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    assert got[0].kind == "start" and got[0].pid == pid
    text = b"".join(e.data for e in got if e.kind == "stdout")
    assert text.startswith(b"hello bg from /tmp\ntick0\n")  # replay from the beginning, then follow

    await bwrap_rt.kill_process(capsule, pid, None, "SIGTERM")
    for _ in range(50):
        if not await bwrap_rt.list_processes(capsule):
            break
        await asyncio.sleep(0.1)
    assert await bwrap_rt.list_processes(capsule) == []
    ends = [e async for e in bwrap_rt.connect_process(capsule, pid, None) if e.kind == "end"]
    assert ends and ends[0].error == "signal: SIGTERM"
    with pytest.raises(ProcessNotFound):
        await bwrap_rt.kill_process(capsule, 99999, None, "SIGKILL")
    with pytest.raises(InvalidArgument):
        await bwrap_rt.kill_process(capsule, pid, None, "SIGHUP")


async def test_kill_by_tag_sigkill(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    await bwrap_rt.start_background(capsule, "sleep", ["100"], "t1", {}, "")
    await bwrap_rt.start_background(capsule, "sleep", ["100"], "t1", {}, "")
    assert len(await bwrap_rt.list_processes(capsule)) == 2
    await bwrap_rt.kill_process(capsule, None, "t1", "")
    await asyncio.sleep(0.3)
    assert await bwrap_rt.list_processes(capsule) == []


# ---------------------------------------------------------------- PTY
async def _collect_until(stream: AsyncIterator[PtyEvent], needle: bytes, buf: list[PtyEvent]) -> bytes:
    async with asyncio.timeout(10):
        async for ev in stream:
            buf.append(ev)
            out = b"".join(e.data for e in buf if e.kind == "output")
            if needle in out or ev.kind == "exited":
                return out
    return b"".join(e.data for e in buf if e.kind == "output")


async def test_pty_echo_resize_reattach_exit(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    stream = bwrap_rt.pty_attach(capsule, "pty-abc12345", "/bin/bash", [], 100, 30, {"PS1": "$ "}, "", "")
    first = await stream.__anext__()
    assert first.kind == "started" and first.pid > 0 and first.tag == "pty-abc12345"
    buf: list[PtyEvent] = []
    await bwrap_rt.pty_input(capsule, "pty-abc12345", b"stty size; test -t 0 && echo mark-$((6*7))\n")
    out = await _collect_until(stream, b"mark-42", buf)
    assert b"30 100" in out
    await bwrap_rt.pty_resize(capsule, "pty-abc12345", 120, 40)
    await bwrap_rt.pty_input(capsule, "pty-abc12345", b"stty size\n")
    assert b"40 120" in await _collect_until(stream, b"40 120", buf)
    await stream.aclose()  # type: ignore[attr-defined]

    # the process survives the stream; reattach by tag with an empty cmd
    again = bwrap_rt.pty_attach(capsule, "pty-abc12345", "", [], 0, 0, {}, "", "")
    buf2: list[PtyEvent] = []
    await bwrap_rt.pty_input(capsule, "pty-abc12345", b"echo back-$((2+3)); exit 3\n")
    await _collect_until(again, b"__never__", buf2)
    assert buf2[0].kind != "started"
    assert b"back-5" in b"".join(e.data for e in buf2 if e.kind == "output")
    assert buf2[-1].kind == "exited" and buf2[-1].exit_code == 3
    await bwrap_rt.pty_kill(capsule, "pty-abc12345")  # late kill is tolerated


async def test_pty_kill_and_cwd_env(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    stream = bwrap_rt.pty_attach(capsule, "pty-k", "/bin/sh", ["-c", 'echo "$V $(pwd)"; sleep 100'],
                                 80, 24, {"V": "val"}, "/tmp", "")
    buf: list[PtyEvent] = []
    assert b"val /tmp" in await _collect_until(stream, b"val /tmp", buf)
    await bwrap_rt.pty_kill(capsule, "pty-k")
    async with asyncio.timeout(5):
        async for ev in stream:
            buf.append(ev)
    assert buf[-1].kind == "exited"


# ---------------------------------------------------------------- files
async def test_files_roundtrip_list_mkdir_remove(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    blob = bytes(range(256)) * 3 + b"\x00\x01\x02\xff"
    await bwrap_rt.write_file(capsule, "deep/a/b/c.bin", blob)
    assert await bwrap_rt.read_file(capsule, "/home/wrenn-user/deep/a/b/c.bin") == blob
    await bwrap_rt.write_file(capsule, "deep/a/b/c.bin", b"short")  # overwrite truncates
    assert await bwrap_rt.read_file(capsule, "deep/a/b/c.bin") == b"short"
    _, out, _ = await sh(bwrap_rt, capsule, "stat -c '%U:%G' deep/a/b/c.bin deep/a")
    assert out.split() == ["wrenn-user:wrenn-user"] * 2

    await sh(bwrap_rt, capsule, "echo x > .hidden && ln -s .hidden link && mkdir -p d1/d2 && echo y > d1/d2/f")
    top = {e.name: e for e in await bwrap_rt.list_dir(capsule, "/home/wrenn-user", 1)}
    assert {".hidden", ".bashrc", "link", "deep", "d1"} <= set(top)
    assert top["link"].type == "symlink" and top["link"].symlink_target == ".hidden"
    assert top["d1"].type == "directory" and top["d1"].permissions.startswith("d")
    h = top[".hidden"]
    assert (h.type, h.size, h.owner, h.group, h.permissions) == ("file", 2, "wrenn-user", "wrenn-user", "-rw-r--r--")
    assert h.modified_at > 1_600_000_000
    deep = await bwrap_rt.list_dir(capsule, "/home/wrenn-user", 3)
    assert "/home/wrenn-user/d1/d2/f" in {e.path for e in deep} and len(deep) > len(top)
    root_entries = {e.name: e for e in await bwrap_rt.list_dir(capsule, "/", 1)}
    assert root_entries["etc"].owner == "root"

    entry = await bwrap_rt.make_dir(capsule, "newdir/x/y")
    assert entry.type == "directory" and entry.path == "/home/wrenn-user/newdir/x/y"
    with pytest.raises(AlreadyExists):
        await bwrap_rt.make_dir(capsule, "newdir/x/y")
    await bwrap_rt.remove_path(capsule, "newdir")
    await bwrap_rt.remove_path(capsule, "link")  # removes the link, not its target
    assert await bwrap_rt.read_file(capsule, ".hidden") == b"x\n"
    for bad in ("newdir", "missing.txt"):
        with pytest.raises(PathNotFound):
            await bwrap_rt.read_file(capsule, bad)
    with pytest.raises(PathNotFound):
        await bwrap_rt.list_dir(capsule, "/nope", 1)
    with pytest.raises(PathNotFound):
        await bwrap_rt.remove_path(capsule, "/nope")


async def test_files_streaming_multi_mb(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    payload = os.urandom(5 * 1024 * 1024 + 123)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 64 * 1024):
            yield payload[i:i + 64 * 1024]

    await bwrap_rt.write_file_stream(capsule, "big/blob.bin", chunks())
    _, out, _ = await sh(bwrap_rt, capsule, "sha256sum big/blob.bin")
    assert out.split()[0] == hashlib.sha256(payload).hexdigest()
    got = [c async for c in bwrap_rt.read_file_stream(capsule, "big/blob.bin")]
    assert max(len(c) for c in got) == 64 * 1024 and len(got) > 80
    assert hashlib.sha256(b"".join(got)).hexdigest() == hashlib.sha256(payload).hexdigest()


# ---------------------------------------------------------------- metrics, network, TTL, snapshots
async def test_metrics_sampling_and_flush(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    await sh(bwrap_rt, capsule, "dd if=/dev/zero of=f bs=1M count=8 status=none; "
             "timeout 1 sh -c 'while :; do :; done' || true")
    await asyncio.sleep(1.2)
    pts = await bwrap_rt.get_metrics(capsule, "5m")
    assert len(pts) >= 2
    assert max(p.cpu_pct for p in pts) > 10
    assert all(p.mem_bytes > 0 for p in pts)
    assert max(p.disk_bytes for p in pts) >= 8 * 1024 * 1024
    with pytest.raises(InvalidArgument):
        await bwrap_rt.get_metrics(capsule, "3m")
    flushed = await bwrap_rt.flush_metrics(capsule)
    assert len(flushed.points_10m) >= 2
    assert await bwrap_rt.get_metrics(capsule, "10m") == []


async def test_network_port_reachable_from_agent(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    await bwrap_rt.start_background(capsule, "python3", ["-m", "http.server", "8123", "--bind", "0.0.0.0"],
                                    "http", {}, "/etc")
    ip, port = bwrap_rt.proxy_target(capsule, 8123)
    assert ip == bwrap_rt._caps[capsule].ip and port == 8123
    body = b""
    for _ in range(50):
        r = subprocess.run(["curl", "-s", "--max-time", "2", f"http://{ip}:{port}/hostname"], capture_output=True)
        if r.returncode == 0:
            body = r.stdout
            break
        await asyncio.sleep(0.1)
    assert body.strip() == capsule.encode()
    if bwrap_rt.nat_status == "":
        rules = subprocess.run(["iptables", "-t", "nat", "-S", "WRENN-NAT"], capture_output=True, text=True).stdout
        assert "MASQUERADE" in rules


async def test_ttl_auto_pause_drained_once(bwrap_rt: BwrapRuntime) -> None:
    sid = "cl-ttl" + os.urandom(4).hex()
    bwrap_rt.drain_auto_paused()
    await bwrap_rt.create(CreateSpec(sandbox_id=sid, team_id="", template_id="", timeout_sec=1))
    try:
        for _ in range(60):
            if bwrap_rt._caps[sid].status == "paused":
                break
            await asyncio.sleep(0.1)
        assert bwrap_rt._caps[sid].status == "paused"
        assert bwrap_rt.drain_auto_paused() == [sid]
        assert bwrap_rt.drain_auto_paused() == []
        assert ("sandbox.auto_paused", sid, {}) in bwrap_rt.test_events  # type: ignore[attr-defined]
        await bwrap_rt.resume(sid, 0, "", {})
        assert (await sh(bwrap_rt, sid, "echo alive"))[1] == "alive\n"
    finally:
        await bwrap_rt.destroy(sid)


async def test_pause_freezes_counter_and_resume_continues(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    await bwrap_rt.start_background(
        capsule, "/bin/sh", ["-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done"],
        "counter", {}, "")
    await asyncio.sleep(0.5)
    await bwrap_rt.pause(capsule)
    upper_count = bwrap_rt._caps[capsule].dir / "upper" / "tmp" / "count"
    frozen_at = int(upper_count.read_text())
    await asyncio.sleep(0.6)
    assert int(upper_count.read_text()) == frozen_at  # no progress while paused
    await bwrap_rt.resume(capsule, 0, "", {})
    await asyncio.sleep(0.4)
    after = int((await bwrap_rt.read_file(capsule, "/tmp/count")).decode())
    assert frozen_at < after < frozen_at + 20  # continued from where it was, not restarted


async def test_snapshot_creates_template_and_boots(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    team, tpl = "11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-000000000000"
    await bwrap_rt.write_file(capsule, "state.txt", b"persisted")
    await sh(bwrap_rt, capsule, "sudo rm /etc/motd; sudo touch /etc/from-snapshot")
    size = await bwrap_rt.create_snapshot(capsule, team, tpl, "my-snap")
    assert size > 50 * 1024 * 1024
    assert await bwrap_rt.template_size(team, tpl) == size
    assert (await sh(bwrap_rt, capsule, "echo still-running"))[1] == "still-running\n"
    sid = "cl-snap" + os.urandom(4).hex()
    await bwrap_rt.create(CreateSpec(sandbox_id=sid, team_id=team, template_id=tpl))
    try:
        assert await bwrap_rt.read_file(sid, "state.txt") == b"persisted"
        code, out, _ = await sh(bwrap_rt, sid, "test -e /etc/motd || echo gone; ls /etc/from-snapshot; sudo whoami")
        assert code == 0 and out.split() == ["gone", "/etc/from-snapshot", "root"]
    finally:
        await bwrap_rt.destroy(sid)
    await bwrap_rt.delete_snapshot(team, tpl)
    assert not (bwrap_rt.templates_dir / team / tpl).exists()
    with pytest.raises(InvalidArgument):
        await bwrap_rt.create_snapshot(capsule, "not-a-uuid", tpl, "x")


async def test_flatten_rootfs_destroys_capsule(bwrap_rt: BwrapRuntime) -> None:
    sid = "cl-flat" + os.urandom(4).hex()
    team, tpl = "11111111-2222-3333-4444-555555555555", "aaaaaaaa-7777-8888-9999-000000000000"
    await bwrap_rt.create(CreateSpec(sandbox_id=sid, team_id="", template_id=""))
    await bwrap_rt.write_file(sid, "built.txt", b"image")
    assert await bwrap_rt.flatten_rootfs(sid, team, tpl, "img") > 0
    assert sid not in bwrap_rt._caps
    assert (bwrap_rt.templates_dir / team / tpl / "rootfs/home/wrenn-user/built.txt").read_bytes() == b"image"
    await bwrap_rt.delete_snapshot(team, tpl)


async def test_bad_ids_rejected(bwrap_rt: BwrapRuntime) -> None:
    with pytest.raises(InvalidArgument):
        await bwrap_rt.create(CreateSpec(sandbox_id="cl-x", team_id="zzz", template_id=""))
    with pytest.raises(SandboxNotFound):
        await bwrap_rt.ping("cl-nope")
