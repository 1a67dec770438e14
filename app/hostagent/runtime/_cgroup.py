"""cgroup v1 group per capsule: memory, cpu (quota), cpuacct (usage), pids (fork bombs), freezer (pause)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

CONTROLLERS = ("freezer", "memory", "cpu", "cpuacct", "pids")
PARENT = "wrenn"


def _mountpoints() -> dict[str, Path]:
    """controller -> mount point of its v1 hierarchy (co-mounted controllers share one)."""
    out: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _src, opts = (right.split() + ["", ""])[:3]
            if fstype != "cgroup":
                continue
            mnt = Path(left.split()[4])
            for opt in opts.split(","):
                if opt in CONTROLLERS:
                    out.setdefault(opt, mnt)
    return out


class CgroupSet:
    """One directory per distinct hierarchy; missing controllers are simply skipped."""

    def __init__(self, sandbox_id: str) -> None:
        mounts = _mountpoints()
        self.paths: dict[str, Path] = {c: m / PARENT / sandbox_id for c, m in mounts.items()}

    def dirs(self) -> list[Path]:
        return sorted(set(self.paths.values()))

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs()]

    def create(self, memory_mb: int, vcpus: int, pids_max: int) -> None:
        for d in self.dirs():
            d.mkdir(parents=True, exist_ok=True)
        self._set("memory", "memory.limit_in_bytes", str(memory_mb * 1024 * 1024))
        self._set("memory", "memory.swappiness", "0", optional=True)
        self._set("cpu", "cpu.cfs_period_us", "100000")
        self._set("cpu", "cpu.cfs_quota_us", str(max(vcpus, 1) * 100000))
        self._set("pids", "pids.max", str(pids_max))

    def _set(self, ctrl: str, name: str, value: str, optional: bool = False) -> None:
        d = self.paths.get(ctrl)
        if d is None:
            return
        try:
            (d / name).write_text(value)
        except OSError:
            if not optional:
                raise

    def _get(self, ctrl: str, name: str) -> str | None:
        d = self.paths.get(ctrl)
        if d is None:
            return None
        try:
            return (d / name).read_text()
        except OSError:
            return None

    def has(self, ctrl: str) -> bool:
        return ctrl in self.paths

    # --- pause -------------------------------------------------------------------------------
    def freeze(self, timeout: float = 5.0) -> bool:
        """Freeze and wait until every task is frozen. False = no freezer (caller falls back)."""
        if not self.has("freezer"):
            return False
        self._set("freezer", "freezer.state", "FROZEN")
        deadline = time.monotonic() + timeout
        while (self._get("freezer", "freezer.state") or "").strip() != "FROZEN":
            if time.monotonic() > deadline:
                raise TimeoutError("freezer did not reach FROZEN")
            time.sleep(0.002)
        return True

    def thaw(self) -> None:
        self._set("freezer", "freezer.state", "THAWED")

    # --- accounting --------------------------------------------------------------------------
    def cpu_usage_ns(self) -> int:
        v = self._get("cpuacct", "cpuacct.usage")
        return int(v) if v else 0

    def memory_bytes(self) -> int:
        """Usage minus reclaimable inactive file cache (what `docker stats` shows)."""
        usage = self._get("memory", "memory.usage_in_bytes")
        if not usage:
            return 0
        inactive = 0
        for line in (self._get("memory", "memory.stat") or "").splitlines():
            key, _, val = line.partition(" ")
            if key == "total_inactive_file":
                inactive = int(val)
        return max(int(usage) - inactive, 0)

    def oom_kills(self) -> int:
        for line in (self._get("memory", "memory.oom_control") or "").splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def pids(self) -> list[int]:
        out: set[int] = set()
        for f in self.procs_files():
            try:
                out.update(int(x) for x in Path(f).read_text().split())
            except OSError:
                continue
        return sorted(out)

    # --- teardown ----------------------------------------------------------------------------
    def kill_all(self, timeout: float = 5.0) -> None:
        self.thaw()  # frozen tasks cannot die
        deadline = time.monotonic() + timeout
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)

    def remove(self) -> None:
        for d in self.dirs():
            for _ in range(200):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)  # last tasks still exiting
