"""Template builds through the in-process app (no host agent): the recipe format and its refusals, the name
rules, permissions, reads and cancel; a build with no host to run on fails at provisioning with the reason."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.builds import recipe as recipes
from app.builds.models import TemplateBuild
from app.builds.schemas import StepState
from app.core import clock, ids
from app.core.errors import InvalidRequest
from tests.api.helpers import Client, Platform

ROOT = Path(__file__).resolve().parents[2]


# --- the recipe format (pure) -------------------------------------------------------------------------


def test_shipped_recipes_parse_into_the_build_format() -> None:
    shipped = sorted((ROOT / "templates").glob("*/recipe.json"))
    assert shipped, "no recipes under templates/"
    for path in shipped:
        recipe = recipes.parse(recipes.load_file(path))
        assert recipe.steps and recipe.name
    code_runner = recipes.parse(recipes.load_file(ROOT / "templates/code-runner/recipe.json"))
    assert code_runner.name == "code-runner-beta" and code_runner.default_user == "wrenn-user"
    kinds = [s.kind for s in code_runner.steps]
    assert kinds[0] == "file" and kinds[-2:] == ["start", "check"] and kinds.count("run") == 6
    start = code_runner.steps[-2].start
    assert start is not None and start.ready_port == 8888
    assert code_runner.healthcheck.startswith("port 8888 answers within 30s")


def test_step_kinds_and_the_reference_line_format() -> None:
    recipe = recipes.parse({
        "name": "x", "base_template": "minimal", "env": {"A": "1"},
        "files": {"/etc/a": {"content": "a", "mode": "0600"}},
        "steps": [{"run": "echo hi", "user": "default", "timeout_sec": 5}, {"env": {"B": "2"}},
                  {"workdir": "/srv"}, {"file": "/srv/b", "content_b64": "aGk=", "owner": "wrenn-user"}],
        "start": {"cmd": "sleep 1", "user": "default"}, "check": "true",
    })
    assert [(s.index, s.kind) for s in recipe.steps] == [(1, "file"), (2, "run"), (3, "env"), (4, "workdir"),
                                                          (5, "file"), (6, "start"), (7, "check")]
    assert recipe.steps[0].mode == 0o600 and recipe.steps[4].content == b"hi" and recipe.steps[1].user == "default"
    assert recipe.steps[5].start is not None and recipe.steps[5].start.user == ""  # default → template's user
    roundtrip = [recipes.Step.from_json(s.to_json()).to_json() for s in recipe.steps]
    assert roundtrip == [s.to_json() for s in recipe.steps]

    lines = recipes.parse({"name": "y", "recipe": ["RUN apt-get update", "USER wrenn-user", "WORKDIR /home/x",
                                                   "ENV K=v w", "RUN id"], "healthcheck": "test -d /home/x"})
    assert [(s.kind, s.user if s.kind == "run" else "") for s in lines.steps] == [
        ("run", "root"), ("workdir", ""), ("env", ""), ("run", "wrenn-user"), ("check", "")]
    assert lines.steps[2].env == {"K": "v w"}


@pytest.mark.parametrize(("doc", "message"), [
    ({}, "the recipe is empty"),
    ([], "a recipe is a JSON object"),
    ({"steps": [{"run": "x"}]}, "name: field required"),
    ({"name": "x"}, "the recipe has no steps"),
    ({"name": "x", "steps": []}, "the recipe has no steps"),
    ({"name": "../x", "steps": [{"run": "x"}]}, "name: must match"),
    ({"name": "x", "steps": "echo"}, "steps: must be an array"),
    ({"name": "x", "steps": [{"run": ""}]}, "steps[0].run: must be a non-empty string"),
    ({"name": "x", "steps": [{"run": "a", "env": {"A": "1"}}]}, "steps[0]: a step has exactly one of"),
    ({"name": "x", "steps": [{"nope": 1}]}, "steps[0]: unknown field 'nope'"),
    ({"name": "x", "steps": [{"env": {"1A": "x"}}]}, "steps[0].env: invalid variable name '1A'"),
    ({"name": "x", "steps": [{"workdir": "rel"}]}, "steps[0].workdir: must be an absolute path"),
    ({"name": "x", "steps": [{"file": "/a", "mode": "999"}]}, "steps[0].mode: must be an octal mode"),
    ({"name": "x", "steps": [{"file": "/a", "content_b64": "@@"}]}, "steps[0].content_b64: not valid base64"),
    ({"name": "x", "steps": [{"run": "a", "user": "Bad User"}]}, "steps[0].user: must be 'root', 'default'"),
    ({"name": "x", "steps": [{"run": "a", "timeout_sec": 0}]}, "steps[0].timeout_sec: must be an integer"),
    ({"name": "x", "steps": [{"workdir": "/a", "user": "root"}]}, "steps[0].user: not allowed in a workdir step"),
    ({"name": "x", "start": {"cmd": ""}}, "start: 'cmd' must be a non-empty string"),
    ({"name": "x", "start": {"cmd": "a", "ready": {"port": 70000}}}, "start: 'ready.port' must be an integer"),
    ({"name": "x", "vcpus": 0, "steps": [{"run": "a"}]}, "vcpus: must be an integer between 1 and 64"),
    ({"name": "x", "recipe": ["COPY a b"]}, "recipe[0]: expected RUN, ENV, WORKDIR or USER"),
    ({"name": "x", "steps": [{"run": "a"}], "surprise": 1}, "surprise: unknown field"),
])
def test_malformed_recipes_are_refused_naming_the_field(doc: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        recipes.parse(doc)
    assert message in caught.value.message


def test_as_user_switches_identity_and_keeps_env() -> None:
    same = recipes.as_user("echo $A", user="wrenn-user", exec_user="wrenn-user", env={"A": "1 2"}, cwd="/x")
    assert same == "exec env 'A=1 2' /bin/sh -c 'cd /x && echo $A'"
    sudo = recipes.as_user("id", user="root", exec_user="wrenn-user", env={}, cwd="")
    assert sudo.startswith("exec sudo -n -H -u root -- env /bin/sh -c ")
    runuser = recipes.as_user("id", user="wrenn-user", exec_user="root", env={}, cwd="")
    assert runuser.startswith("exec runuser -u wrenn-user -- env HOME=")


# --- the API ----------------------------------------------------------------------------------------------


@pytest.fixture
async def admin(platform: Platform) -> Client:
    return await platform.user("Admin")  # the first user is the platform admin


async def _wait(admin: Client, build_id: str, within: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        body = (await admin.get(f"/v1/admin/builds/{build_id}")).json()
        if body["status"] in ("success", "failed", "cancelled"):
            return dict(body)
        await asyncio.sleep(0.1)
    raise AssertionError(f"build {build_id} did not finish")


async def test_bad_input_is_refused_and_nothing_is_recorded(admin: Client, platform: Platform) -> None:
    cases: list[tuple[Any, int, str, str]] = [
        (b"", 400, "invalid_request", "a recipe is a JSON object"),
        (b"{}", 400, "invalid_request", "the recipe is empty"),
        (b'{"name": "x", "steps": [', 400, "invalid_request", "not valid JSON"),
        (b"[1]", 400, "invalid_request", "a recipe is a JSON object"),
        ({"name": "x", "base": "no-such-base", "steps": [{"run": "a"}]}, 400, "invalid_request",
         "base: no platform template named 'no-such-base'"),
        ({"name": "minimal", "steps": [{"run": "a"}]}, 409, "name_reserved", "built-in template"),
        ({"name": "code-runner-beta", "steps": [{"run": "a"}]}, 409, "template_name_taken", "overwrite"),
        ({"name": "x", "steps": [{"run": "a", "user": 5}]}, 400, "invalid_request", "steps[0].user"),
    ]
    for body, status, code, message in cases:
        if isinstance(body, bytes):
            r = await admin.post("/v1/admin/builds", content=body, headers={"Content-Type": "application/json"})
        else:
            r = await admin.post("/v1/admin/builds", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["code"] == code and message in r.json()["error"]["message"], (body, r.text)
    assert (await admin.get("/v1/admin/builds")).json() == []

    # A team template's name is not available to a platform build either.
    state = platform.app.state.wrenn  # type: ignore[union-attr]
    async with state.db() as db, db.begin():
        await db.execute(text("INSERT INTO templates (id, name, type, team_id) VALUES (gen_random_uuid(), "
                              "'teams-own', 'snapshot', :t)"), {"t": ids.decode(ids.TEAM, admin.team_id)})
    r = await admin.post("/v1/admin/builds", json={"name": "teams-own", "overwrite": True, "steps": [{"run": "a"}]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "template_name_taken"
    assert "team's template" in r.json()["error"]["message"]


async def test_permissions_ids_and_unknown_builds(admin: Client, platform: Platform) -> None:
    member = await platform.user("Member")
    recipe = {"name": "perm-tpl", "steps": [{"run": "true"}]}
    assert (await member.post("/v1/admin/builds", json=recipe)).status_code == 403
    assert (await member.get("/v1/admin/builds")).status_code == 403
    anon = platform.client()
    assert (await anon.get("/v1/admin/builds")).status_code == 401
    missing = "bld-" + "0" * 24 + "1"
    r = await admin.get(f"/v1/admin/builds/{missing}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await admin.post(f"/v1/admin/builds/{missing}/cancel")).status_code == 404
    r = await admin.get("/v1/admin/builds/cl-nope")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert (await admin.get("/v1/admin/builds", params={"status": "weird"})).status_code == 400
    assert (await admin.get("/v1/admin/builds", params={"limit": 0})).status_code == 400
    # No CSRF header: refused before anything is recorded.
    r = await admin.http.post("/v1/admin/builds", json=recipe)
    assert r.status_code == 403
    assert (await admin.get("/v1/admin/builds")).json() == []


async def test_a_build_with_no_host_fails_at_provisioning(admin: Client, platform: Platform) -> None:
    r = await admin.post("/v1/admin/builds", json={"name": "nohost-tpl", "description": "d",
                                                   "metadata": {"k": "v"}, "steps": [{"run": "true"}]})
    assert r.status_code == 202, r.text
    queued = r.json()
    assert queued["status"] == "pending" and queued["phase"] == "queued" and queued["team_id"].startswith("team-")
    assert queued["created_by"] == admin.user_id and queued["created_by_email"] == admin.email
    assert queued["description"] == "d" and queued["metadata"] == {"k": "v"}
    assert queued["steps"] == [{"step": 1, "name": "true", "kind": "run", "status": "pending", "started_at": None,
                                "finished_at": None, "duration_ms": None, "exit_code": None, "error": None,
                                "truncated": 0, "log_tail": []}]
    build = await _wait(admin, queued["id"])
    assert build["status"] == "failed" and build["sandbox_id"] is None
    assert build["failed_step"] == {"index": None, "name": "provisioning", "phase": "provisioning"}
    assert build["error"].startswith("could not create the build capsule: no online platform hosts available")
    assert build["steps"][0]["status"] == "skipped" and build["completed_at"]
    r = await admin.post(f"/v1/admin/builds/{queued['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"
    listed = (await admin.get("/v1/admin/builds")).json()
    assert [b["id"] for b in listed] == [queued["id"]] and "logs" not in listed[0]
    detail = (await admin.get(f"/v1/admin/builds/{queued['id']}", params={"logs": "false"})).json()
    assert "logs" not in detail
    assert json.loads(json.dumps(detail)) == detail


async def test_the_sweep_requeues_lost_builds_and_fails_abandoned_ones(admin: Client, platform: Platform) -> None:
    """What a restarted leader finds: a pending build missing from the queue (re-queued, then run) and a build
    left ``running`` by a process that died (no heartbeat: failed with the reason, never running forever)."""
    state = platform.app.state.wrenn  # type: ignore[union-attr]
    step = recipes.parse({"name": "x", "steps": [{"name": "only", "run": "true"}]}).steps[0]
    rows = {}
    async with state.db() as db, db.begin():
        for name, status in (("lost-pending", "pending"), ("abandoned", "running")):
            logs = [StepState(step=1, name="only", kind="run",
                              status="running" if status == "running" else "pending").to_json()]
            row = TemplateBuild(id=ids.new_uuid(), name=name, base_template="minimal", recipe=[step.to_json()],
                                status=status, total_steps=1, current_step=1 if status == "running" else 0,
                                logs=logs, team_id=ids.ZERO_UUID, metadata_={"phase": "steps"},
                                created_at=clock.now(), started_at=clock.now() if status == "running" else None)
            db.add(row)
            rows[name] = ids.encode(ids.BUILD, row.id)
    abandoned = await _wait(admin, rows["abandoned"], within=30)
    assert abandoned["status"] == "failed" and abandoned["cleaned_up"]
    assert abandoned["error"].startswith("the control plane that ran this build stopped at step 1 ('only')")
    assert abandoned["failed_step"] == {"index": 1, "name": "only", "phase": "interrupted"}
    lost = await _wait(admin, rows["lost-pending"], within=30)
    assert lost["status"] == "failed" and "no online platform hosts" in lost["error"]  # it was picked up and run
