"""capsule.commands via the official SDK (separate Python 3.13 process) against real wrenn-cp + wrenn-agent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.sdk.conftest import SdkRunner


@pytest.fixture(scope="module")
def capsule_id(sdk: SdkRunner) -> Iterator[str]:
    cid: str = sdk("lifecycle", "create")["id"]
    yield cid
    assert sdk("lifecycle", "destroy", capsule=cid)["status"] == "stopped"


def test_run_stdout_stderr_exit_code(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("commands", "run_basic", capsule=capsule_id)
    assert r["exit_code"] == 42


def test_envs_and_cwd(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("commands", "envs_and_cwd", capsule=capsule_id)
    assert r["cwd_relative"] == "/home/wrenn-user/rel/sub" and r["bad_cwd_code"]


def test_timeout_is_an_error_before_client_gives_up(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("commands", "timeout", capsule=capsule_id)
    assert r["seconds"] < 12 and r["code"] in ("timeout", "agent_error", "deadline_exceeded")


def test_background_list_kill(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("commands", "background_list_kill", capsule=capsule_id)
    assert r["pid"] > 0 and r["auto_tag"].startswith("proc-") and r["unknown_kill_code"] == "not_found"


def test_stream_over_websocket(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("commands", "stream", capsule=capsule_id)
    assert r["exit_code"] == 5 and "stdout" in r["kinds"]


def test_connect_to_background_process(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("commands", "connect_background", capsule=capsule_id)
    assert r["ticks"] == ["tick1", "tick2", "tick3", "tick4"] and r["exit_code"] == 7


def test_port_proxy_get_url(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("commands", "port_proxy", capsule=capsule_id)
    assert r["url"].startswith(f"http://8000-{capsule_id}.127.0.0.1:")
    assert r["closed_port_status"] in (502, 503) and r["bad_key_status"] == 401
