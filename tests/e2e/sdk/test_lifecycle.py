"""Lifecycle via the official SDK (separate Python 3.13 process) against real wrenn-cp + wrenn-agent."""

from __future__ import annotations

from tests.e2e.sdk.conftest import SdkRunner


def test_create_with_wait_list_get_connect(sdk: SdkRunner) -> None:
    r = sdk("lifecycle", "create_list_get_connect")
    assert r["id"].startswith("cl-") and r["listed"] >= 1
    assert r["ready_seconds"] < 30
    assert r["missing_code"] == "not_found" and r["whoami"] == "wrenn-user"


def test_pause_resume_keeps_processes(sdk: SdkRunner) -> None:
    r = sdk("lifecycle", "pause_resume")
    assert r["paused_error_code"] == "invalid_state" and r["counter_after_resume"] > 0


def test_destroy_then_get_is_stopped(sdk: SdkRunner) -> None:
    r = sdk("lifecycle", "destroy_then_get")
    assert r["status_after_destroy"] == "stopped"
    assert r["run_error_code"] in ("invalid_state", "not_found")
