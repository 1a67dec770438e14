"""The SDK's async client (AsyncCapsule) for a representative subset, against real wrenn-cp + wrenn-agent."""

from __future__ import annotations

from tests.e2e.sdk.conftest import SdkRunner


def test_async_capsule_subset(sdk: SdkRunner) -> None:
    r = sdk("async_client", "subset", timeout=180)
    assert r["id"].startswith("cl-") and r["stream_exit"] == 2 and r["pty_exit"] == 6
