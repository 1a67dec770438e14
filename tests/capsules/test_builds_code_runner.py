"""Dogfood: the shipped ``templates/code-runner/recipe.json`` builds through ``POST /v1/admin/builds`` (the same
path as any recipe) into a working code-runner template: Jupyter Server answering on 8888 as the start
command, the ``wrenn`` kernelspec, numpy/pandas/matplotlib importable. Built under another name, so the
``code-runner-beta`` row and its prebuilt files stay untouched."""

from __future__ import annotations

from pathlib import Path

from app.builds.recipe import load_file
from tests.api.helpers import Client
from tests.capsules.build_helpers import admin_client, capsule_status, delete_template, wait_build
from tests.capsules.conftest import Stack
from tests.capsules.helpers import new_capsule, run

RECIPE = Path(__file__).resolve().parents[2] / "templates" / "code-runner" / "recipe.json"


async def test_code_runner_recipe_builds_through_the_api(stack: Stack, sdk: Client) -> None:
    admin = admin_client(stack)
    recipe = load_file(RECIPE)
    assert recipe["name"] == "code-runner-beta"
    recipe["name"] = "code-runner-dogfood"
    r = await admin.post("/v1/admin/builds", json=recipe)
    assert r.status_code == 202, r.text
    build = await wait_build(admin, r.json()["id"], within=1200)
    assert build["status"] == "success", (build["error"], build["steps"])
    assert build["default_user"] == "wrenn-user"
    assert await capsule_status(admin, build["sandbox_id"]) == "stopped"
    try:
        capsule = await new_capsule(sdk, template="code-runner-dogfood", timeout_sec=0)
        processes = (await sdk.get(f"/v1/capsules/{capsule}/processes")).json()["processes"]
        assert any(p["tag"] == "start" and "jupyter server" in " ".join(p["args"]) for p in processes), processes
        venv = "/opt/wrenn/venv/bin"
        out = await run(sdk, capsule, f"whoami; curl -s http://127.0.0.1:8888/api; echo; "
                                      f"{venv}/jupyter kernelspec list --json | grep -c '\"wrenn\"'; "
                                      f"{venv}/python -c 'import numpy, pandas, matplotlib; print(\"libs\")'",
                        timeout_sec=120)
        lines = out["stdout"].splitlines()
        assert lines[0] == "wrenn-user" and '"version"' in lines[1] and lines[2] == "1" and lines[3] == "libs", out
        assert (await sdk.delete(f"/v1/capsules/{capsule}")).status_code == 202
    finally:
        await delete_template(admin, "code-runner-dogfood")
        await admin.http.aclose()
