"""capsule.git via the official SDK (local operations; github.com is unreachable from these machines)."""

from __future__ import annotations

from tests.e2e.sdk.conftest import SdkRunner


def test_init_add_commit_status_branches(sdk: SdkRunner) -> None:
    r = sdk("git", "local_workflow")
    assert r["untracked"] == ["README.md", "src/"]
    assert r["branches"] == ["feature", "main"] and r["current"] == ["feature"]
    assert "nothing to commit" in r["empty_commit_error"] and r["main_commits"] == 2
