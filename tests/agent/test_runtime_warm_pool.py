"""The warm pool: creates of ``minimal`` capsules claim a pre-booted capsule, which behaves exactly like
one booted on demand (its own name, limits, isolation), and nothing is left after shutdown."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

from app.hostagent.runtime._cgroup import CgroupSet
from app.hostagent.runtime.base import CreateSpec
from app.hostagent.runtime.bwrap import BwrapRuntime

ZERO = str(uuid.UUID(int=0))


async def _wait_pool(rt: BwrapRuntime, size: int) -> None:
    for _ in range(300):
        if len(rt._pool) >= size:  # noqa: SLF001 - observing the pool is the point of this test
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the warm pool was not filled")


async def test_claimed_capsules_are_renamed_limited_and_cleaned(minimal_rootfs: Path) -> None:
    data = Path("/var/tmp") / f"wrenn-pool-{uuid.uuid4().hex[:8]}"
    data.mkdir(mode=0o711)
    rt = BwrapRuntime(data, minimal_rootfs.parent, minimal_rootfs=minimal_rootfs, warm_pool=2)
    try:
        first = CreateSpec(sandbox_id="cl-" + uuid.uuid4().hex[:25], team_id=ZERO, template_id=ZERO)
        await rt.create(first)  # starts the pool (this one boots on demand)
        await _wait_pool(rt, 2)
        pooled = {c.dir.name for c in rt._pool}  # noqa: SLF001
        spec = CreateSpec(sandbox_id="cl-" + uuid.uuid4().hex[:25], team_id=ZERO, template_id=ZERO,
                          memory_mb=256, vcpus=2, default_user="wrenn-user")
        info = await rt.create(spec)
        cap = rt._caps[spec.sandbox_id]  # noqa: SLF001
        assert cap.dir.name in pooled  # it really came from the pool
        assert info.status == "running" and info.memory_mb == 256
        r = await rt.exec(spec.sandbox_id, "/bin/sh", ["-c", "hostname; cat /etc/hostname; whoami"], 30, {}, "")
        assert r.stdout.decode().split() == [spec.sandbox_id, spec.sandbox_id, "wrenn-user"]
        limit = (Path("/sys/fs/cgroup/memory/wrenn") / cap.dir.name / "memory.limit_in_bytes").read_text()
        assert int(limit) == 256 * 1024 * 1024
        assert spec.sandbox_id in [s.sandbox_id for s in await rt.list_sandboxes()]
        assert not (set(s.sandbox_id for s in await rt.list_sandboxes()) & pooled - {cap.dir.name})
        await _wait_pool(rt, 2)  # refilled in the background
        all_dirs = [c.dir for c in rt._pool] + [c.dir for c in rt._caps.values()]  # noqa: SLF001
    finally:
        await rt.shutdown()
    assert not any(d.exists() for d in all_dirs)
    assert not any(d.exists() for name in pooled for d in CgroupSet(name).dirs())
    shutil.rmtree(data, ignore_errors=True)
    assert not os.path.exists(data)
