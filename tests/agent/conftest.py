"""Fixtures for the capsule runtime tests: one BwrapRuntime per session on the cached minimal template."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.hostagent.runtime.base import CreateSpec, SandboxNotFound
from app.hostagent.runtime.bwrap import BwrapRuntime

ROOT = Path(__file__).resolve().parents[2]


def _runtime_supported() -> str:
    if os.geteuid() != 0:
        return "the bwrap runtime needs root (cgroups, veth, uid maps)"
    if not Path("/sys/fs/cgroup/freezer").is_dir():
        return "cgroup v1 freezer not mounted"
    return ""


@pytest.fixture(scope="session")
def minimal_rootfs() -> Path:
    reason = _runtime_supported()
    if reason:
        pytest.skip(reason)
    subprocess.run([str(ROOT / "scripts" / "install-system-deps.sh")], check=True)
    from app.hostagent.templates import ensure_minimal_template

    return ensure_minimal_template()  # cached after the first build


@pytest.fixture(scope="session")
def runtime_dirs() -> Iterator[tuple[Path, Path]]:
    # /var/tmp, not pytest's tmp_path: the capsule's unprivileged host uid must traverse the path
    base = Path(tempfile.mkdtemp(prefix="wrenn-rt-test-", dir="/var/tmp"))
    os.chmod(base, 0o711)
    yield base / "data", base / "templates"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
async def bwrap_rt(minimal_rootfs: Path, runtime_dirs: tuple[Path, Path]) -> AsyncIterator[BwrapRuntime]:
    events: list[tuple[str, str, dict[str, str]]] = []
    rt = BwrapRuntime(
        runtime_dirs[0], runtime_dirs[1], minimal_rootfs=minimal_rootfs,
        on_event=lambda e, s, x: events.append((e, s, x)),
        sample_interval=0.5, min_timeout_sec=1, pids_max=256,
    )
    rt.test_events = events  # type: ignore[attr-defined]
    yield rt
    await rt.shutdown()


@pytest.fixture
async def capsule(bwrap_rt: BwrapRuntime) -> AsyncIterator[str]:
    """A fresh running capsule, destroyed after the test."""
    sid = "cl-t" + uuid.uuid4().hex[:20]
    await bwrap_rt.create(CreateSpec(sandbox_id=sid, team_id="", template_id="", memory_mb=256))
    yield sid
    with contextlib.suppress(SandboxNotFound):
        await bwrap_rt.destroy(sid)
