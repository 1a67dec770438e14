"""A runtime that died without cleaning up (kill -9) leaves nothing behind once it starts again."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

from app.hostagent.runtime._cgroup import CgroupSet
from app.hostagent.runtime.base import CreateSpec
from app.hostagent.runtime.bwrap import BwrapRuntime

ZERO = str(uuid.UUID(int=0))


def _spec() -> CreateSpec:
    return CreateSpec(sandbox_id="cl-" + uuid.uuid4().hex[:25], team_id=ZERO, template_id=ZERO, memory_mb=128)


async def test_restarted_runtime_reaps_a_crashed_runs_leftovers(minimal_rootfs: Path, tmp_path: Path) -> None:
    data = Path("/var/tmp") / f"wrenn-leftover-{uuid.uuid4().hex[:8]}"
    data.mkdir(mode=0o711)
    try:
        crashed = BwrapRuntime(data, minimal_rootfs.parent, minimal_rootfs=minimal_rootfs)
        spec = _spec()
        info = await crashed.create(spec)
        assert info.status == "running"
        cap_dir = data / "capsules" / spec.sandbox_id
        cgroup_dirs = [d for d in CgroupSet(spec.sandbox_id).dirs() if d.exists()]
        assert cap_dir.is_dir() and cgroup_dirs
        # Simulate the agent dying: its capsule dies with it, nothing is cleaned up.
        os.kill(crashed._caps[spec.sandbox_id].init_pid, signal.SIGKILL)  # noqa: SLF001 - test reaches in
        crashed._caps.clear()  # noqa: SLF001

        restarted = BwrapRuntime(data, minimal_rootfs.parent, minimal_rootfs=minimal_rootfs)
        fresh = _spec()
        await restarted.create(fresh)
        assert not cap_dir.exists()
        assert not any(d.exists() for d in cgroup_dirs)
        assert (data / "capsules" / fresh.sandbox_id).is_dir()  # its own capsule is untouched
        await restarted.shutdown()
    finally:
        import shutil

        shutil.rmtree(data, ignore_errors=True)
