"""wrenn.code_runner via the official SDK against a real code-runner-beta capsule (Jupyter via the port proxy)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.sdk.conftest import SdkRunner

pytestmark = pytest.mark.timeout(3600)  # the first build of code-runner-beta on a machine takes minutes


def test_run_code_value_and_matplotlib_figure(sdk: SdkRunner, code_runner_template: dict[str, Any]) -> None:
    r = sdk("code_runner", "value_and_figure", timeout=240)
    assert r["text"] == "42" and r["png_bytes"] > 5000 and r["error_name"] == "ZeroDivisionError"
    assert r["url"].startswith("http://8888-cl-")
    print(f"code-runner: capsule ready {r['ready_seconds']} s, first cell {r['first_cell_seconds']} s, "
          f"template build {code_runner_template['build_seconds']} s")


def test_async_code_runner(sdk: SdkRunner, code_runner_template: dict[str, Any]) -> None:
    r = sdk("async_client", "code_runner", timeout=240)
    assert r["text"] == "45" and r["png"] and r["error"] == "ValueError"
