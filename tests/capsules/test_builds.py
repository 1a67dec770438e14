"""Template builds against a live control plane and a real agent: a recipe becomes a platform template whose
capsules have its files, packages and running start command; failures, readiness timeouts and cancels leave
nothing behind; the admin SSE stream carries the build's events in order (and team streams never do)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.api.helpers import Client
from tests.api.sse import SSEStream
from tests.capsules.build_helpers import (
    admin_client,
    capsule_status,
    delete_template,
    small_recipe,
    wait_build,
    wait_step,
)
from tests.capsules.conftest import Stack
from tests.capsules.helpers import new_capsule, run

# A recipe exercising every step kind. Packages come from the Debian mirror and PyPI through the agent's NAT
# (the build capsule borrows this machine's CA bundle for TLS-intercepting egress).
ACCEPT: dict[str, Any] = {
    "name": "accept-tpl",
    "base": "minimal",
    "description": "acceptance: a file, a Python package, a start command with a readiness check",
    "env": {"DEBIAN_FRONTEND": "noninteractive", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    "steps": [
        {"name": "python venv support",
         "run": "apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null"
                " && rm -rf /var/lib/apt/lists/* && echo venv-ready"},
        {"name": "virtualenv + six", "run": "python3 -m venv /opt/app && /opt/app/bin/pip install six==1.17.0"},
        {"env": {"APP_MODE": "built"}},
        {"workdir": "/opt/app"},
        {"file": "/opt/app/hello.txt", "content": "hello from the recipe\n", "mode": "0640", "owner": "default"},
        {"name": "as the default user", "user": "default",
         "run": "whoami > ~/built-by.txt && pwd >> ~/built-by.txt && echo \"mode=$APP_MODE\" >> ~/built-by.txt"},
    ],
    "start": {"cmd": "exec /opt/app/bin/python -m http.server 8080 --bind 0.0.0.0 --directory /opt/app",
              "user": "root", "ready": {"port": 8080, "timeout_sec": 20}},
    "check": "/opt/app/bin/python -c 'import six; print(six.__version__)' && test -f /opt/app/hello.txt",
    "metadata": {"suite": "builds"},
}


async def _events_until(stream: SSEStream, build_id: str, last: str, wait: float = 240) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while True:
        frame = await stream.next(wait)
        if frame.event and frame.event.startswith("build.") and frame.json()["resource"]["id"] == build_id:
            got.append(frame.json())
            if frame.event == last:
                return got


async def test_recipe_builds_a_template_with_file_package_and_start_command(stack: Stack, sdk: Client) -> None:
    admin = admin_client(stack)
    headers = {"X-CSRF-Token": stack.admin_cookies["wrenn_csrf"]}
    async with SSEStream(f"{stack.url}/v1/admin/events/stream", cookies=stack.admin_cookies) as events, \
            SSEStream(f"{stack.url}/v1/events/stream", headers={"X-API-Key": stack.api_key}) as team:
        r = await admin.post("/v1/admin/builds", json=ACCEPT, headers=headers)
        assert r.status_code == 202, r.text
        queued = r.json()
        build_id = queued["id"]
        assert build_id.startswith("bld-") and queued["status"] == "pending" and queued["total_steps"] == 8
        assert [s["kind"] for s in queued["recipe"]] == ["run", "run", "env", "workdir", "file", "run", "start",
                                                          "check"]
        assert queued["healthcheck"].startswith("port 8080 answers")
        timeline = await _events_until(events, build_id, "build.succeeded")
        team_frames = await team.quiet(1.0)
    names = [e["event"] for e in timeline]
    assert names[0] == "build.queued" and names[-1] == "build.succeeded"
    steps = [(e["event"], e["metadata"]["step"]) for e in timeline[1:-1]]
    assert steps == [(kind, str(i)) for i in range(1, 9) for kind in ("build.step.started", "build.step.finished")]
    assert all(e["metadata"]["status"] == "success" for e in timeline if e["event"] == "build.step.finished")
    assert all(e["resource"]["type"] == "build" for e in timeline)
    assert not [f for f in team_frames if f.event and f.event.startswith("build.")]  # never on a team stream

    build = await wait_build(admin, build_id)
    assert build["status"] == "success" and build["template"] == "accept-tpl" and build["cleaned_up"]
    assert build["current_step"] == build["total_steps"] == 8 and build["error"] is None
    assert all(s["status"] == "success" and s["duration_ms"] is not None for s in build["steps"])
    logs = {entry["step"]: entry["output"] for entry in build["logs"]}
    assert "venv-ready" in logs[1] and "Successfully installed six-1.17.0" in logs[2]
    assert "port 8080 answers" in logs[7] and "1.17.0" in logs[8]
    assert build["steps"][1]["log_tail"] and build["metadata"] == {"suite": "builds"}
    assert await capsule_status(admin, build["sandbox_id"]) == "stopped"  # the build capsule is gone

    templates = (await sdk.get("/v1/snapshots")).json()
    made = next(t for t in templates if t["name"] == "accept-tpl")
    assert made["platform"] is True and made["type"] == "base" and made["size_bytes"] > 0
    admin_view = next(t for t in (await admin.get("/v1/admin/templates")).json() if t["name"] == "accept-tpl")
    assert admin_view["origin"] == "platform" and admin_view["created_by"]

    # A team capsule from the new template: the file, the package, the env, and the start command running.
    capsule = await new_capsule(sdk, template="accept-tpl")
    out = await run(sdk, capsule, "cat /opt/app/hello.txt; stat -c '%a %U' /opt/app/hello.txt; "
                                  "/opt/app/bin/python -c 'import six; print(six.__version__)'; "
                                  "echo \"env=$APP_MODE\"; cat ~/built-by.txt; ls -a /tmp")
    assert out["exit_code"] == 0, out
    assert out["stdout"].splitlines()[:6] == ["hello from the recipe", "640 wrenn-user", "1.17.0", "env=built",
                                               "wrenn-user", "/opt/app"]
    assert ".wrenn-build" not in out["stdout"]  # scratch files and the lent CA are not in the template
    processes = (await sdk.get(f"/v1/capsules/{capsule}/processes")).json()["processes"]
    assert any(p["tag"] == "start" for p in processes), processes
    served = await run(sdk, capsule, "curl -sS http://127.0.0.1:8080/hello.txt")
    assert served["stdout"] == "hello from the recipe\n"
    assert (await sdk.delete(f"/v1/capsules/{capsule}")).status_code == 202
    await delete_template(admin, "accept-tpl")
    await admin.http.aclose()


async def test_failing_step_is_recorded_and_nothing_is_left(stack: Stack) -> None:
    admin = admin_client(stack)
    recipe = {"name": "fails-tpl", "steps": [
        {"name": "ok", "run": "echo first"},
        {"name": "boom", "run": "echo about to fail; echo oops >&2; exit 7"},
        {"name": "never", "run": "echo never"},
    ]}
    r = await admin.post("/v1/admin/builds", json=recipe)
    assert r.status_code == 202, r.text
    build = await wait_build(admin, r.json()["id"])
    assert build["status"] == "failed" and build["cleaned_up"]
    assert build["failed_step"] == {"index": 2, "name": "boom", "phase": "steps"}
    assert "step 2 ('boom') failed: exit code 7" in build["error"]
    assert [s["status"] for s in build["steps"]] == ["success", "failed", "skipped"]
    assert build["steps"][1]["exit_code"] == 7 and build["steps"][1]["log_tail"] == ["about to fail", "oops"]
    assert await capsule_status(admin, build["sandbox_id"]) == "stopped"
    names = [t["name"] for t in (await admin.get("/v1/admin/templates")).json()]
    assert "fails-tpl" not in names
    await admin.http.aclose()


async def test_readiness_that_never_passes_fails_within_its_timeout(stack: Stack) -> None:
    admin = admin_client(stack)
    recipe = {"name": "never-ready", "steps": [{"run": "true"}],
              "start": {"cmd": "exec sleep 600", "ready": {"port": 9999, "timeout_sec": 3}}}
    r = await admin.post("/v1/admin/builds", json=recipe)
    assert r.status_code == 202, r.text
    build = await wait_build(admin, r.json()["id"], within=120)
    assert build["status"] == "failed"
    assert build["failed_step"]["index"] == 2 and build["failed_step"]["name"].startswith("start:")
    assert "port 9999 did not answer within 3s" in build["error"]
    assert build["steps"][1]["duration_ms"] < 30_000
    assert await capsule_status(admin, build["sandbox_id"]) == "stopped"

    recipe = {"name": "start-dies", "steps": [{"run": "true"}],
              "start": {"cmd": "echo cannot start >&2; exit 3", "ready": {"port": 9999, "timeout_sec": 3}}}
    r = await admin.post("/v1/admin/builds", json=recipe)
    build = await wait_build(admin, r.json()["id"], within=120)
    assert build["status"] == "failed" and "(the start command exited)" in build["error"]
    assert "cannot start" in "\n".join(build["steps"][1]["log_tail"])
    await admin.http.aclose()


async def test_cancel_mid_build_leaves_nothing(stack: Stack) -> None:
    admin = admin_client(stack)
    async with SSEStream(f"{stack.url}/v1/admin/events/stream", cookies=stack.admin_cookies) as events:
        recipe = {"name": "cancel-tpl", "steps": [{"run": "echo started; sleep 300"}, {"run": "echo never"}]}
        r = await admin.post("/v1/admin/builds", json=recipe)
        assert r.status_code == 202, r.text
        build_id = r.json()["id"]
        running = await wait_step(admin, build_id, 1)
        capsule_id = running["sandbox_id"]
        assert await capsule_status(admin, capsule_id) == "running"
        r = await admin.post(f"/v1/admin/builds/{build_id}/cancel")
        assert r.status_code == 204, r.text
        timeline = await _events_until(events, build_id, "build.cancelled", wait=60)
    build = await wait_build(admin, build_id, within=60)
    assert build["status"] == "cancelled" and build["cleaned_up"]
    assert [s["status"] for s in build["steps"]] == ["cancelled", "skipped"]
    assert await capsule_status(admin, capsule_id) == "stopped"
    assert [e["event"] for e in timeline][-2:] == ["build.step.finished", "build.cancelled"]
    assert "cancel-tpl" not in [t["name"] for t in (await admin.get("/v1/admin/templates")).json()]
    # Finished builds cannot be cancelled.
    r = await admin.post(f"/v1/admin/builds/{build_id}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"
    await admin.http.aclose()


async def test_cancel_queued_build_and_name_rules(stack: Stack) -> None:
    admin = admin_client(stack)
    # Two builds keep the worker busy; a third waits in the queue and is cancelled there.
    busy = []
    for i in range(2):
        r = await admin.post("/v1/admin/builds", json={"name": f"busy-{i}", "steps": [{"run": "sleep 300"}]})
        assert r.status_code == 202, r.text
        busy.append(r.json()["id"])
    for build_id in busy:
        await wait_step(admin, build_id, 1)
    r = await admin.post("/v1/admin/builds", json=small_recipe("queued-tpl"))
    queued = r.json()["id"]
    await asyncio.sleep(1.5)
    assert (await admin.get(f"/v1/admin/builds/{queued}")).json()["status"] == "pending"
    # A second build of a name that is queued → 409
    r = await admin.post("/v1/admin/builds", json=small_recipe("queued-tpl"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert (await admin.post(f"/v1/admin/builds/{queued}/cancel")).status_code == 204
    body = (await admin.get(f"/v1/admin/builds/{queued}")).json()
    assert body["status"] == "cancelled" and body["sandbox_id"] is None and body["cleaned_up"]
    for build_id in busy:
        assert (await admin.post(f"/v1/admin/builds/{build_id}/cancel")).status_code == 204
    for build_id in busy:
        assert (await wait_build(admin, build_id, within=60))["status"] == "cancelled"

    # A finished build's name is now a platform template: taken unless overwrite; overwrite replaces it.
    r = await admin.post("/v1/admin/builds", json=small_recipe("named-tpl"))
    first = await wait_build(admin, r.json()["id"], within=120)
    assert first["status"] == "success", first
    r = await admin.post("/v1/admin/builds", json=small_recipe("named-tpl"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "template_name_taken"
    r = await admin.post("/v1/admin/builds", json=small_recipe("minimal"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "name_reserved"
    r = await admin.post("/v1/admin/builds", json=small_recipe("named-tpl", overwrite=True, memory_mb=768))
    assert r.status_code == 202, r.text
    second = await wait_build(admin, r.json()["id"], within=120)
    assert second["status"] == "success" and second["template_id"] != first["template_id"]
    templates = [t for t in (await admin.get("/v1/admin/templates")).json() if t["name"] == "named-tpl"]
    assert len(templates) == 1 and templates[0]["memory_mb"] == 768

    listed = (await admin.get("/v1/admin/builds")).json()
    assert [b["id"] for b in listed][:2] == [second["id"], first["id"]]
    assert all("logs" not in b for b in listed)
    assert {b["id"] for b in (await admin.get("/v1/admin/builds", params={"status": "cancelled"})).json()} \
        >= {queued, *busy}
    await delete_template(admin, "named-tpl")
    await admin.http.aclose()
