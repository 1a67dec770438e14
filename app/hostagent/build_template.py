"""Agent-side builder for platform templates from a recipe (e.g. ``templates/code-runner/recipe.json``).

How a template is built: the runtime boots a capsule from the recipe's base (``minimal``) as root,
writes the recipe's ``files``, runs its ``steps`` (shell, with outbound network through the
runtime's NAT), writes the start command to ``/etc/wrenn/start.json`` (``template_start``), runs the
``check``, then ``flatten_rootfs`` copies the capsule's filesystem into
``templates_dir/<zero team>/<template id>/rootfs`` and destroys the capsule. The files keep the
capsule id range (the 1e9 uid shift of ``templates.py``), so ``sudo`` and ownership inside work as
in ``minimal``.

Template id: ``uuid5(NAMESPACE_URL, "wrenn:template:<name>")``; the control plane knows the template
through a platform ``templates`` row with that id (migration 0002 for ``code-runner-beta``).

Cache: ``build.json`` next to ``rootfs`` records the recipe hash (recipe + base recipe + builder
version). The same hash is reused at once; a changed recipe rebuilds. One builder per template at a
time (flock); a concurrent caller waits and then reuses the result.

This machine's egress intercepts TLS with its own CA. The build capsule gets the host's CA bundle
for the duration of the build only (``PIP_CERT`` / ``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE`` point
at a temporary copy that is removed before the rootfs is captured), so pip reaches PyPI and nothing
host-specific ends up in the template.

CLI::

    python -m app.hostagent.build_template templates/code-runner/recipe.json [--templates-dir DIR] [--force]

prints the rootfs path and the build record. Exit status 1 with the failing step's output on error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.hostagent import template_start, templates

ZERO_UUID = "00000000-0000-0000-0000-000000000000"
BUILDER_VERSION = "1"
BUILD_CA_PATH = "/tmp/.wrenn-build-ca.pem"
HOST_CA_CANDIDATES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
DEFAULT_STEP_TIMEOUT = 1800


class BuildError(RuntimeError):
    """A recipe step (or the check) failed; the message carries the step name and its output tail."""


@dataclass
class Step:
    name: str
    run: str
    user: str = "root"
    timeout_sec: int = DEFAULT_STEP_TIMEOUT


@dataclass
class Recipe:
    name: str
    base: str
    default_user: str
    steps: list[Step]
    files: dict[str, tuple[int, str]]
    start: template_start.StartSpec | None
    env: dict[str, str] = field(default_factory=dict)
    check: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def template_id(self) -> str:
        return template_id_for(self.name)


def template_id_for(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"wrenn:template:{name}"))


def load_recipe(path: Path) -> Recipe:
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ValueError(f"{path}: a recipe is a JSON object with a 'name'")
    if raw.get("base", "minimal") != "minimal":
        raise ValueError(f"{path}: only base 'minimal' is supported")
    steps = [Step(name=s.get("name") or f"step {i + 1}", run=s["run"], user=s.get("user", "root"),
                  timeout_sec=int(s.get("timeout_sec", DEFAULT_STEP_TIMEOUT)))
             for i, s in enumerate(raw.get("steps", []))]
    files: dict[str, tuple[int, str]] = {}
    for dest, spec in (raw.get("files") or {}).items():
        if not dest.startswith("/"):
            raise ValueError(f"{path}: file destinations must be absolute: {dest!r}")
        files[dest] = (int(str(spec.get("mode", "0644")), 8), spec["content"])
    start = template_start.parse_start_spec(raw["start"]) if raw.get("start") else None
    return Recipe(name=raw["name"], base="minimal", default_user=raw.get("default_user", templates.USER_NAME),
                  steps=steps, files=files, start=start, env=dict(raw.get("env") or {}),
                  check=raw.get("check", ""), raw=raw)


def recipe_hash(recipe: Recipe) -> str:
    base_hash = templates.recipe_hash(templates.debian_mirror())
    blob = json.dumps({"recipe": recipe.raw, "base": base_hash, "builder": BUILDER_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def template_home(templates_dir: Path, recipe: Recipe) -> Path:
    return templates_dir / ZERO_UUID / recipe.template_id


def cached_build(templates_dir: Path, recipe: Recipe) -> dict[str, Any] | None:
    """The build record when the template is built from exactly this recipe, else None."""
    info_path = template_home(templates_dir, recipe) / "build.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return None
    if info.get("recipe_hash") != recipe_hash(recipe) or not (info_path.parent / "rootfs").is_dir():
        return None
    return dict(info)


def _host_ca_bundle() -> bytes | None:
    for cand in HOST_CA_CANDIDATES:
        with contextlib.suppress(OSError):
            return Path(cand).read_bytes()
    return None


def _log(msg: str) -> None:
    print(f"[build-template] {msg}", file=sys.stderr, flush=True)


async def _build(recipe: Recipe, templates_dir: Path, minimal: Path, work_dir: Path) -> dict[str, Any]:
    from app.hostagent.runtime.base import CreateSpec
    from app.hostagent.runtime.bwrap import BwrapRuntime

    rt = BwrapRuntime(work_dir / "data", templates_dir, minimal_rootfs=minimal, sample_interval=5.0)
    sid = "cl-build" + os.urandom(5).hex()
    step_times: list[dict[str, Any]] = []
    try:
        await rt.create(CreateSpec(sandbox_id=sid, team_id="", template_id="", vcpus=max(os.cpu_count() or 1, 1),
                                   memory_mb=4096, default_user="root", template_name=recipe.name))
        env = dict(recipe.env)
        ca = _host_ca_bundle()
        if ca is not None:
            await rt.write_file(sid, BUILD_CA_PATH, ca)
            env.update({"PIP_CERT": BUILD_CA_PATH, "SSL_CERT_FILE": BUILD_CA_PATH, "REQUESTS_CA_BUNDLE": BUILD_CA_PATH})
        for dest, (mode, content) in recipe.files.items():
            await rt.write_file(sid, dest, content.encode())
            await _run(rt, sid, "files", f"chmod {mode:o} {shlex.quote(dest)}", env, "root", 60)
        for step in recipe.steps:
            t0 = time.monotonic()
            _log(f"step: {step.name}")
            await _run(rt, sid, step.name, step.run, env, step.user, step.timeout_sec)
            step_times.append({"name": step.name, "seconds": round(time.monotonic() - t0, 1)})
        if recipe.start is not None:
            await rt.write_file(sid, template_start.START_PATH,
                                json.dumps(recipe.start.to_json(), indent=2).encode() + b"\n")
            await _run(rt, sid, "start.json", f"chmod 0644 {template_start.START_PATH}", env, "root", 60)
        if recipe.check:
            _log("check")
            await _run(rt, sid, "check", recipe.check, env, "root", 600)
        freeze = await _run(rt, sid, "pip freeze", "/opt/wrenn/venv/bin/pip freeze 2>/dev/null || true", env,
                            "root", 120)
        await _run(rt, sid, "remove build CA", f"rm -f {BUILD_CA_PATH}", {}, "root", 60)
        _log("flatten")
        size = await rt.flatten_rootfs(sid, ZERO_UUID, recipe.template_id, recipe.name)
        return {"size_bytes": size, "steps": step_times, "packages": freeze.split()}
    finally:
        if sid in rt._caps:
            with contextlib.suppress(Exception):
                await rt.destroy(sid)
        await rt.shutdown()


async def _run(rt: Any, sid: str, name: str, script: str, env: dict[str, str], user: str, timeout_sec: int) -> str:
    if user and user != "root":
        script = (f"cd ~{user} && exec runuser -u {shlex.quote(user)} -- env HOME=$(getent passwd {shlex.quote(user)}"
                  f" | cut -d: -f6) /bin/sh -c {shlex.quote(script)}")
    from app.hostagent.runtime.base import RuntimeErr

    try:
        r = await rt.exec(sid, "/bin/sh", ["-c", script], timeout_sec, env, "/")
    except RuntimeErr as exc:
        raise BuildError(f"{name}: {exc}") from exc
    out = r.stdout.decode(errors="replace")
    err = r.stderr.decode(errors="replace")
    if r.exit_code != 0:
        raise BuildError(f"step {name!r} failed (exit {r.exit_code}):\n{(out + err)[-6000:]}")
    return out


def ensure_template(recipe_path: Path, templates_dir: Path | None = None, force: bool = False) -> dict[str, Any]:
    """Build (or reuse) the template of ``recipe_path``; returns its build record (with ``rootfs``)."""
    recipe = load_recipe(recipe_path)
    tdir = templates_dir or templates.default_templates_dir()
    minimal = templates.ensure_minimal_template(tdir)
    if not force and (info := cached_build(tdir, recipe)) is not None:
        return {**info, "rootfs": str(template_home(tdir, recipe) / "rootfs"), "cached": True}
    (tdir / ZERO_UUID).mkdir(parents=True, exist_ok=True)
    for d in (tdir, tdir / ZERO_UUID):
        os.chmod(d, 0o755)
    with open(tdir / ZERO_UUID / f".build-{recipe.template_id}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; others wait and reuse
        if not force and (info := cached_build(tdir, recipe)) is not None:
            return {**info, "rootfs": str(template_home(tdir, recipe) / "rootfs"), "cached": True}
        work = Path(tempfile.mkdtemp(prefix="wrenn-build-", dir="/var/tmp"))
        os.chmod(work, 0o711)  # the capsule's unprivileged host uid must traverse it
        started = time.monotonic()
        try:
            result = asyncio.run(_build(recipe, tdir, minimal, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        info = {
            "name": recipe.name,
            "template_id": recipe.template_id,
            "team_id": ZERO_UUID,
            "recipe_hash": recipe_hash(recipe),
            "recipe": str(recipe_path),
            "build_seconds": round(time.monotonic() - started, 1),
            "built_at": int(time.time()),
            **result,
        }
        home = template_home(tdir, recipe)
        (home / "build.json").write_text(json.dumps(info, indent=2))
        return {**info, "rootfs": str(home / "rootfs"), "cached": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build (or reuse) a platform template from a recipe")
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--templates-dir", type=Path, default=None)
    parser.add_argument("--force", action="store_true", help="rebuild even when the cached build matches")
    args = parser.parse_args(argv)
    try:
        info = ensure_template(args.recipe, args.templates_dir, args.force)
    except (BuildError, ValueError, OSError) as exc:
        print(f"template build failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in info.items() if k != "packages"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
