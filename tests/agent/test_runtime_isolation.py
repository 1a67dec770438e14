"""Adversarial isolation tests: a capsule (even with sudo) must not reach the host or other capsules."""
# ruff: noqa: ASYNC109, ASYNC221, ASYNC240  (tests inspect the host synchronously on purpose)

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from app.hostagent.runtime.base import CreateSpec, RuntimeErr
from app.hostagent.runtime.bwrap import BwrapRuntime

pytestmark = pytest.mark.timeout(60)


async def sh(rt: BwrapRuntime, sid: str, script: str, timeout: int = 20) -> tuple[int, str, str]:
    r = await rt.exec(sid, "/bin/sh", ["-c", script], timeout, {}, "")
    return r.exit_code, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


@pytest.fixture
def host_sentinel() -> tuple[Path, str]:
    secret = "host-secret-" + uuid.uuid4().hex
    path = Path("/root") / f"wrenn-sentinel-{uuid.uuid4().hex[:8]}"
    path.write_text(secret)
    os.chmod(path, 0o644)
    yield path, secret  # type: ignore[misc]
    path.unlink(missing_ok=True)


async def test_cannot_read_host_file(bwrap_rt: BwrapRuntime, capsule: str, host_sentinel: tuple[Path, str]) -> None:
    path, secret = host_sentinel
    tmp_sentinel = Path("/tmp") / path.name
    tmp_sentinel.write_text(secret)
    try:
        code, out, _ = await sh(bwrap_rt, capsule, f"sudo cat {path} {tmp_sentinel}; "
                                f"sudo grep -rs {secret} /root /tmp /var /etc /home; "
                                f"sudo find / -xdev -name {path.name} 2>/dev/null")
        assert secret not in out and path.name not in out
    finally:
        tmp_sentinel.unlink()


async def test_cannot_see_or_signal_other_processes(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    other = "cl-o" + uuid.uuid4().hex[:12]
    await bwrap_rt.create(CreateSpec(sandbox_id=other, team_id="", template_id=""))
    try:
        await bwrap_rt.start_background(other, "sleep", ["777"], "victim", {}, "")
        code, out, _ = await sh(bwrap_rt, capsule, "ps -eo pid,args")
        assert "sleep 777" not in out and "pytest" not in out and "/work" not in out
        pids = [int(line.split()[0]) for line in out.splitlines()[1:]]
        assert max(pids) < 100  # its own pid namespace
        # a host pid (the test runner itself) and the other capsule's init: kill fails or misses
        host_pid = os.getpid()
        other_init = bwrap_rt._caps[other].init_pid
        code, out, err = await sh(bwrap_rt, capsule, f"sudo kill -9 {host_pid}; echo rc=$?; "
                                  f"sudo kill -9 {other_init}; echo rc=$?")
        assert "rc=0" not in out
        assert Path(f"/proc/{other_init}").exists()
        code, out, _ = await sh(bwrap_rt, other, "ps -eo args")
        assert "sleep 777" in out
    finally:
        await bwrap_rt.destroy(other)


async def test_root_in_capsule_is_not_host_root(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    code, out, _ = await sh(bwrap_rt, capsule, "sudo cat /proc/self/uid_map; sudo sh -c 'id -u'")
    assert out.split()[:3] == ["0", str(1_000_000_000), "65536"]
    init = bwrap_rt._caps[capsule].init_pid
    # the capsule's root is an unprivileged uid on the host
    status = Path(f"/proc/{init}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1] == str(1_000_000_000)


async def test_cannot_write_outside_overlay(bwrap_rt: BwrapRuntime, capsule: str, minimal_rootfs: Path) -> None:
    before = sorted(os.listdir(minimal_rootfs / "usr" / "bin"))
    code, out, _ = await sh(bwrap_rt, capsule, "sudo touch /pwned; sudo rm -rf /usr/* /etc/passwd; "
                            "/bin/ls /usr 2>&1; echo done")
    assert "done" in out
    assert sorted(os.listdir(minimal_rootfs / "usr" / "bin")) == before
    assert (minimal_rootfs / "etc" / "passwd").exists()
    assert not (minimal_rootfs / "pwned").exists() and not Path("/pwned").exists()
    upper = bwrap_rt._caps[capsule].dir / "upper"
    assert (upper / "pwned").exists()  # the write landed in this capsule's own upper dir


async def test_cannot_escape_via_proc(bwrap_rt: BwrapRuntime, capsule: str, host_sentinel: tuple[Path, str]) -> None:
    path, secret = host_sentinel
    code, out, _ = await sh(
        bwrap_rt, capsule,
        f"for p in /proc/1/root /proc/self/root /proc/2/root /proc/1/cwd; do sudo cat $p{path}; done; "
        "sudo cat /proc/1/mountinfo; sudo ls /proc/1/root/; cat /proc/self/cgroup")
    assert secret not in out
    # no host filesystem is mounted inside: only the overlay, proc, tmpfs/devpts and /dev nodes
    fstypes = {line.split(" - ")[1].split()[0] for line in out.splitlines() if " - " in line}
    assert fstypes <= {"overlay", "proc", "tmpfs", "devtmpfs", "devpts", "mqueue"}, fstypes
    code, out, _ = await sh(bwrap_rt, capsule, "sudo sh -c 'echo 1 > /proc/sys/kernel/sysrq'; echo rc=$?")
    assert "rc=0" not in out  # host sysctls are read-only for the capsule


async def test_mount_is_confined(bwrap_rt: BwrapRuntime, capsule: str, host_sentinel: tuple[Path, str]) -> None:
    path, secret = host_sentinel
    code, out, err = await sh(bwrap_rt, capsule, "mount -t tmpfs x /mnt; echo user_rc=$?")
    assert "user_rc=0" not in out  # unprivileged user cannot mount at all
    host_mounts = Path("/proc/self/mountinfo").read_text()
    code, out, _ = await sh(
        bwrap_rt, capsule,
        "sudo mount -t tmpfs x /mnt && echo tmpfs_ok; sudo mkdir -p /mnt/p && sudo mount -t proc proc /mnt/p; "
        "sudo mount --bind / /mnt 2>&1; sudo mount /dev/vda /mnt 2>&1; echo rc=$?; "
        f"sudo cat /mnt/p/1/root{path} 2>&1")
    assert "tmpfs_ok" in out  # allowed, but only inside the capsule's own mount namespace
    assert secret not in out and "rc=0" not in out
    assert Path("/proc/self/mountinfo").read_text().count("tmpfs x") == host_mounts.count("tmpfs x")


async def test_symlinks_in_file_api_stay_inside(bwrap_rt: BwrapRuntime, capsule: str,
                                                host_sentinel: tuple[Path, str]) -> None:
    path, secret = host_sentinel
    host_tmp = Path("/tmp") / path.name
    host_tmp.write_text(secret)
    host_shadow = Path("/etc/shadow").read_bytes()
    try:
        await sh(bwrap_rt, capsule, f"ln -s /etc/shadow shadow-link; ln -s ../../../../..{host_tmp} up-link; "
                 f"ln -s {host_tmp} abs-link; ln -s /proc/1/root/etc/hostname magic-link; "
                 "sudo chmod 644 /etc/shadow")
        # /etc/shadow via the link is the capsule's own shadow, never the host's
        data = await bwrap_rt.read_file(capsule, "shadow-link")
        assert b"wrenn-user" in data and data != host_shadow
        for link in ("up-link", "abs-link", f"../../../../..{host_tmp}", f"/../../..{path}"):
            with pytest.raises(RuntimeErr):  # missing inside the capsule (or not readable): never the host file
                await bwrap_rt.read_file(capsule, link)
        with pytest.raises(RuntimeErr):
            await bwrap_rt.read_file(capsule, "magic-link")  # /proc magic links are refused
        # writing through a link that points "outside" lands inside the capsule
        await bwrap_rt.write_file(capsule, "up-link", b"overwritten")
        assert host_tmp.read_text() == secret
        assert (await sh(bwrap_rt, capsule, f"cat {host_tmp}"))[1] == "overwritten"
        listing = await bwrap_rt.list_dir(capsule, "/home/wrenn-user", 1)
        assert {e.name: e.symlink_target for e in listing}["abs-link"] == str(host_tmp)
        # the API acts as the capsule user: root-only capsule files stay protected
        with pytest.raises(RuntimeErr):
            await bwrap_rt.write_file(capsule, "/etc/passwd", b"x")
        with pytest.raises(RuntimeErr):
            await bwrap_rt.write_file(capsule, "/proc/sys/kernel/sysrq", b"1")
    finally:
        host_tmp.unlink()


async def test_memory_hog_is_oom_killed(bwrap_rt: BwrapRuntime) -> None:
    sid = "cl-oom" + uuid.uuid4().hex[:8]
    await bwrap_rt.create(CreateSpec(sandbox_id=sid, team_id="", template_id="", memory_mb=128))
    try:
        code, out, err = await sh(bwrap_rt, sid, "python3 -c 'x = bytearray(600 * 1024 * 1024); print(len(x))'")
        assert code != 0 and "629145600" not in out
        cap = bwrap_rt._caps[sid]
        assert cap.cg.oom_kills() >= 1
        assert (await sh(bwrap_rt, sid, "echo survived"))[1] == "survived\n"  # the capsule lives on
    finally:
        await bwrap_rt.destroy(sid)


async def test_fork_bomb_is_contained(bwrap_rt: BwrapRuntime) -> None:
    sid = "cl-fork" + uuid.uuid4().hex[:8]
    await bwrap_rt.create(CreateSpec(sandbox_id=sid, team_id="", template_id=""))
    try:
        cap = bwrap_rt._caps[sid]
        bomb = "bomb() { bomb | bomb & }; bomb; sleep 3"
        await bwrap_rt.start_background(sid, "/bin/bash", ["-c", bomb], "bomb", {}, "")
        await asyncio.sleep(2)
        current = int((cap.cg.paths["pids"] / "pids.current").read_text())
        assert current <= bwrap_rt.pids_max
        assert int((cap.cg.paths["pids"] / "pids.events").read_text().split()[1]) > 0  # limit was hit
        host_free = Path("/proc/loadavg").read_text().split()[3]  # running/total tasks on the host
        assert int(host_free.split("/")[1]) < 30000
    finally:
        await bwrap_rt.destroy(sid)
    assert not cap.cg.paths["pids"].exists()


async def test_capsules_cannot_reach_each_other_or_host(bwrap_rt: BwrapRuntime, capsule: str) -> None:
    other = "cl-n" + uuid.uuid4().hex[:12]
    await bwrap_rt.create(CreateSpec(sandbox_id=other, team_id="", template_id=""))
    try:
        await bwrap_rt.start_background(other, "python3", ["-m", "http.server", "8124"], "srv", {}, "/tmp")
        ip = bwrap_rt._caps[other].ip
        host_side = bwrap_rt._caps[capsule].host_ip
        probe = ("import socket,sys\nfor h,p in [(sys.argv[1],8124),(sys.argv[2],22),(sys.argv[2],50051)]:\n"
                 "  s=socket.socket(); s.settimeout(1)\n"
                 "  print(h, p, s.connect_ex((h,p)))\n")
        await asyncio.sleep(0.5)
        code, out, err = await sh(bwrap_rt, capsule, f"python3 -c '{probe}' {ip} {host_side}")
        results = [line.split()[-1] for line in out.splitlines()]
        assert len(results) == 3 and "0" not in results, out + err
    finally:
        await bwrap_rt.destroy(other)
