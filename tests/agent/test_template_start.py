"""Template start command (``/etc/wrenn/start.json``): launched at create, not at resume, inherited by snapshots."""
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import json
import os

import pytest

from app.hostagent import template_start
from app.hostagent.runtime.base import CreateSpec, InvalidArgument
from app.hostagent.runtime.bwrap import BwrapRuntime

pytestmark = pytest.mark.timeout(120)

TEAM = "11111111-2222-3333-4444-555555555555"


async def sh(rt: BwrapRuntime, sid: str, script: str) -> tuple[int, str]:
    r = await rt.exec(sid, "/bin/sh", ["-c", script], 20, {}, "")
    return r.exit_code, r.stdout.decode() + r.stderr.decode()


async def _template_with_start(rt: BwrapRuntime, tpl: str, start: dict[str, object] | str) -> None:
    """A template = the minimal rootfs plus /etc/wrenn/start.json (via a snapshot of a capsule)."""
    sid = "cl-mk" + os.urandom(4).hex()
    await rt.create(CreateSpec(sandbox_id=sid, team_id="", template_id=""))
    try:
        body = start if isinstance(start, str) else json.dumps(start)
        await rt.write_file(sid, "/tmp/start.json", body.encode())
        code, out = await sh(rt, sid, "sudo mkdir -p /etc/wrenn && sudo cp /tmp/start.json /etc/wrenn/start.json")
        assert code == 0, out
        await rt.flatten_rootfs(sid, TEAM, tpl, "with-start")
    finally:
        if sid in rt._caps:
            await rt.destroy(sid)


async def _port_open(ip: str, port: int) -> bool:
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(ip, port), 2)
    except (OSError, TimeoutError):
        return False
    w.close()
    return True


def test_parse_start_spec() -> None:
    spec = template_start.parse_start_spec(
        b'{"cmd":"srv","user":"u","cwd":"/w","env":{"A":"1"},"ready":{"port":8888,"timeout_sec":5}}')
    assert (spec.cmd, spec.user, spec.cwd, spec.env, spec.tag, spec.ready_port, spec.ready_timeout) == \
        ("srv", "u", "/w", {"A": "1"}, "start", 8888, 5.0)
    assert template_start.parse_start_spec(spec.to_json()) == spec
    for bad in (b"[]", b"{", b'{"cmd":""}', b'{"cmd":"x","env":{"A":1}}', b'{"cmd":"x","ready":{"port":70000}}',
                b'{"cmd":"x","user":5}'):
        with pytest.raises(template_start.StartSpecError):
            template_start.parse_start_spec(bad)


async def test_start_command_runs_at_create_once_and_snapshots_inherit(bwrap_rt: BwrapRuntime) -> None:
    tpl = "5a5a5a5a-0000-4000-8000-" + os.urandom(6).hex()
    start: dict[str, object] = {
        "cmd": 'echo "$(id -un) $GREETING $(pwd)" > /tmp/started.txt; date +%s%N >> /tmp/starts.log; '
               "exec python3 -m http.server 8123 --bind 0.0.0.0",
        "user": "wrenn-user", "cwd": "/tmp", "env": {"GREETING": "hello world"},
        "ready": {"port": 8123, "timeout_sec": 20},
    }
    await _template_with_start(bwrap_rt, tpl, start)
    sid = "cl-st" + os.urandom(4).hex()
    try:
        info = await bwrap_rt.create(CreateSpec(sandbox_id=sid, team_id=TEAM, template_id=tpl))
        # ready.port: the service accepts connections as soon as create returns
        assert await _port_open(info.host_ip, 8123)
        procs = await bwrap_rt.list_processes(sid)
        assert [(p.tag, p.cmd) for p in procs] == [("start", "/bin/sh")]
        assert (await bwrap_rt.read_file(sid, "/tmp/started.txt")).decode() == "wrenn-user hello world /tmp\n"
        code, out = await sh(bwrap_rt, sid, "ps -o user:20=,args= -C python3")
        assert code == 0 and out.split()[0] == "wrenn-user" and "http.server" in out

        # pause is a freeze: resume must not start a second copy
        await bwrap_rt.pause(sid)
        await bwrap_rt.resume(sid, 0, "", {})
        assert await _port_open(info.host_ip, 8123)
        assert len((await bwrap_rt.read_file(sid, "/tmp/starts.log")).splitlines()) == 1
        assert [p.tag for p in await bwrap_rt.list_processes(sid)] == ["start"]

        # a snapshot of this capsule carries start.json along
        snap = "5b5b5b5b-0000-4000-8000-" + os.urandom(6).hex()
        await bwrap_rt.create_snapshot(sid, TEAM, snap, "snap")
        sid2 = "cl-st2" + os.urandom(4).hex()
        info2 = await bwrap_rt.create(CreateSpec(sandbox_id=sid2, team_id=TEAM, template_id=snap))
        try:
            assert await _port_open(info2.host_ip, 8123)
            assert [p.tag for p in await bwrap_rt.list_processes(sid2)] == ["start"]
        finally:
            await bwrap_rt.destroy(sid2)
            await bwrap_rt.delete_snapshot(TEAM, snap)
    finally:
        if sid in bwrap_rt._caps:
            await bwrap_rt.destroy(sid)
        await bwrap_rt.delete_snapshot(TEAM, tpl)


async def test_invalid_start_spec_fails_create_and_cleans_up(bwrap_rt: BwrapRuntime) -> None:
    tpl = "5c5c5c5c-0000-4000-8000-" + os.urandom(6).hex()
    await _template_with_start(bwrap_rt, tpl, {"cmd": "sleep 1000", "user": "no-such-user"})
    sid = "cl-bad" + os.urandom(4).hex()
    try:
        with pytest.raises(InvalidArgument, match="no-such-user"):
            await bwrap_rt.create(CreateSpec(sandbox_id=sid, team_id=TEAM, template_id=tpl))
        assert sid not in bwrap_rt._caps
        assert not (bwrap_rt.data_dir / "capsules" / sid).exists()
    finally:
        await bwrap_rt.delete_snapshot(TEAM, tpl)


async def test_template_without_start_file_has_no_processes(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    assert await bwrap_rt.list_processes(capsule) == []
