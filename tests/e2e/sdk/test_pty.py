"""capsule.pty via the official SDK (separate Python 3.13 process) against real wrenn-cp + wrenn-agent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.sdk.conftest import SdkRunner


@pytest.fixture(scope="module")
def capsule_id(sdk: SdkRunner) -> Iterator[str]:
    cid: str = sdk("lifecycle", "create")["id"]
    yield cid
    assert sdk("lifecycle", "destroy", capsule=cid)["status"] == "stopped"


def test_typed_input_echoed_resize_exit(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("pty", "typed_echo_resize_exit", capsule=capsule_id)
    assert r["tag"].startswith("pty-") and r["pid"] > 0
    assert r["size_before"] and r["resized"] and r["exit_code"] == 3


def test_input_written_immediately_after_open(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("pty", "immediate_input", capsule=capsule_id)
    assert r["seen"]


def test_cmd_args_envs_cwd(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("pty", "cmd_args_envs_cwd", capsule=capsule_id)
    assert r["echo"] == "hello from echo" and "[bar baz] [/tmp]" in r["env_cwd"]


def test_reattach_after_dropped_socket(sdk: SdkRunner, capsule_id: str) -> None:
    r = sdk("pty", "reattach", capsule=capsule_id)
    assert r["reattached"]
