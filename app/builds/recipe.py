"""Build recipes: the one format for platform templates (``templates/*/recipe.json``, ``POST /v1/admin/builds``).

A recipe is a JSON (or YAML) object::

    {"name": "code-runner-beta",              # required: the platform template to produce (safe name)
     "base": "minimal",                       # base platform template (alias: "base_template"); default minimal
     "description": "…",
     "vcpus": 1, "memory_mb": 512,            # resources of the build capsule, recorded on the template
     "default_user": "wrenn-user",            # the template's default user (default: the base's)
     "env": {"DEBIAN_FRONTEND": "noninteractive"},   # build-time environment of every step (not kept)
     "files": {"/etc/x.conf": {"content": "…", "mode": "0644"}},   # written before the steps
     "steps": [                               # ordered; each object has exactly one action key
       {"name": "deps", "run": "apt-get update && …", "user": "root", "timeout_sec": 600},
       {"run": "pip install --user six", "user": "default"},       # "root" (default), "default", or a name
       {"env": {"PATH": "/opt/venv/bin:/usr/bin:/bin"}},  # later steps see it; kept as the template's env
       {"workdir": "/opt/app"},                # later steps run there (created if missing)
       {"file": "/opt/app/x.txt", "content": "hi\\n", "mode": "0644", "owner": "default"},  # or content_b64
     ],
     "start": {"cmd": "…", "user": "wrenn-user", "cwd": "…", "env": {…},
               "ready": {"port": 8888, "timeout_sec": 30}},   # /etc/wrenn/start.json; verified before snapshot
     "check": "python3 -c 'import six'",      # must exit 0 (as root) after the start command is ready
     "metadata": {"k": "v"},                  # string labels shown on the build
     "overwrite": false}                      # replace an existing platform template of that name

The reference's line format is accepted too: ``"recipe": ["RUN apt-get update", "ENV A=1", "WORKDIR /x",
"USER wrenn-user"]`` (``USER`` sets the user of the following ``RUN`` lines) and ``"healthcheck"`` (a command,
like ``check``).

``parse`` turns that into a ``Recipe`` whose ``steps`` are normalised: ``files`` first, then the steps in
order, then ``start`` and ``check`` as the last two steps, each with a 1-based ``index``, a ``kind``
(``run``, ``env``, ``workdir``, ``file``, ``start``, ``check``) and a display ``name``. Every problem is a
``RecipeError`` (400) naming the field, e.g. ``steps[3].run: must be a non-empty string``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.errors import InvalidRequest
from app.core.validation import SAFE_NAME_RE
from app.hostagent import template_start

MAX_STEPS = 200
MAX_SCRIPT = 64 * 1024
MAX_FILE_BYTES = 512 * 1024
DEFAULT_STEP_TIMEOUT = 600
MAX_STEP_TIMEOUT = 4 * 3600
DEFAULT_READY_TIMEOUT = 30
MAX_VCPUS = 64
MAX_MEMORY_MB = 256 * 1024
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
KINDS = ("run", "env", "workdir", "file", "start", "check")
ACTIONS = ("run", "env", "workdir", "file")  # the action keys a step object may carry
TOP_LEVEL = frozenset({
    "name", "base", "base_template", "description", "vcpus", "memory_mb", "default_user", "env", "default_env",
    "files", "steps", "recipe", "start", "check", "healthcheck", "metadata", "overwrite", "skip_pre_post",
})
STEP_KEYS = frozenset({"name", "run", "user", "timeout_sec", "env", "workdir", "file", "content", "content_b64",
                       "mode", "owner"})
ROOT = "root"
DEFAULT_USER = "default"  # a step's ``user``/``owner`` meaning "the template's default user"


class RecipeError(InvalidRequest):
    """The recipe is empty or malformed; the message names the field."""


@dataclass
class Step:
    index: int
    kind: str
    name: str
    run: str = ""
    user: str = ROOT
    timeout_sec: int = DEFAULT_STEP_TIMEOUT
    env: dict[str, str] = field(default_factory=dict)
    path: str = ""
    content: bytes = b""
    mode: int = 0o644
    owner: str = ROOT
    start: template_start.StartSpec | None = None

    def to_json(self, *, content: bool = True) -> dict[str, Any]:
        """Storage form (``template_builds.recipe``); with ``content=False`` the API's summary form."""
        out: dict[str, Any] = {"index": self.index, "kind": self.kind, "name": self.name}
        if self.kind in ("run", "check"):
            out.update(run=self.run, user=self.user, timeout_sec=self.timeout_sec)
        elif self.kind == "env":
            out["env"] = dict(self.env)
        elif self.kind == "workdir":
            out["workdir"] = self.path
        elif self.kind == "file":
            out.update(path=self.path, mode=f"{self.mode:04o}", owner=self.owner, size=len(self.content))
            if content:
                out["content_b64"] = base64.b64encode(self.content).decode()
        elif self.kind == "start" and self.start is not None:
            out["start"] = self.start.to_json()
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Step:
        kind = raw["kind"]
        step = cls(index=int(raw["index"]), kind=kind, name=str(raw.get("name", "")))
        if kind in ("run", "check"):
            step.run, step.user, step.timeout_sec = raw["run"], raw.get("user", ROOT), int(raw["timeout_sec"])
        elif kind == "env":
            step.env = dict(raw["env"])
        elif kind == "workdir":
            step.path = raw["workdir"]
        elif kind == "file":
            step.path, step.mode, step.owner = raw["path"], int(raw["mode"], 8), raw.get("owner", ROOT)
            step.content = base64.b64decode(raw.get("content_b64", ""))
        elif kind == "start":
            step.start = template_start.parse_start_spec(raw["start"])
        return step

    @property
    def timeout(self) -> int:
        """How long this step may take (the readiness wait for ``start``)."""
        if self.kind == "start" and self.start is not None:
            return int(self.start.ready_timeout) + 30
        return self.timeout_sec


@dataclass
class Recipe:
    name: str
    base: str = "minimal"
    description: str = ""
    vcpus: int = 1
    memory_mb: int = 512
    default_user: str = ""  # "" = the base template's
    env: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    overwrite: bool = False
    skip_pre_post: bool = False

    @property
    def healthcheck(self) -> str:
        """A one-line description of what must pass before the snapshot (``template_builds.healthcheck``)."""
        parts = []
        for step in self.steps:
            if step.kind == "start" and step.start is not None and step.start.ready_port:
                parts.append(f"port {step.start.ready_port} answers within {step.start.ready_timeout:g}s")
            elif step.kind == "check":
                parts.append(step.run)
        return "; ".join(parts)


# --- parsing ------------------------------------------------------------------------------------


def load_file(path: Path) -> dict[str, Any]:
    """Read a recipe file (``.json``, or ``.yaml``/``.yml``); raises RecipeError when unreadable."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(f"{path}: {exc.strerror or exc}") from exc
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    else:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise RecipeError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RecipeError(f"{path}: a recipe is an object")
    return doc


def _str(value: Any, where: str, *, empty: bool = False, limit: int = 4096) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise RecipeError(f"{where}: must be a non-empty string" if not empty else f"{where}: must be a string")
    if "\x00" in value:
        raise RecipeError(f"{where}: must not contain NUL characters")
    if len(value) > limit:
        raise RecipeError(f"{where}: longer than {limit} characters")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RecipeError(f"{where}: must be an integer between {low} and {high}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise RecipeError(f"{where}: must be true or false")
    return value


def _env(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: must be an object of strings")
    out: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not ENV_NAME_RE.match(key):
            raise RecipeError(f"{where}: invalid variable name {key!r}")
        out[key] = _str(val, f"{where}.{key}", empty=True)
    return out


def _user(value: Any, where: str) -> str:
    value = _str(value, where, limit=32)
    if value not in (ROOT, DEFAULT_USER) and not USER_RE.match(value):
        raise RecipeError(f"{where}: must be 'root', 'default' or a user name")
    return value


def _path(value: Any, where: str) -> str:
    value = _str(value, where)
    if not value.startswith("/"):
        raise RecipeError(f"{where}: must be an absolute path")
    return value


def _mode(value: Any, where: str) -> int:
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise RecipeError(f"{where}: must be an octal mode such as \"0644\"")
    return mode


def _content(raw: dict[str, Any], where: str) -> bytes:
    if "content" in raw and "content_b64" in raw:
        raise RecipeError(f"{where}: give content or content_b64, not both")
    if "content_b64" in raw:
        try:
            data = base64.b64decode(_str(raw["content_b64"], f"{where}.content_b64", empty=True,
                                         limit=MAX_FILE_BYTES * 2), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RecipeError(f"{where}.content_b64: not valid base64") from exc
    else:
        data = _str(raw.get("content", ""), f"{where}.content", empty=True, limit=MAX_FILE_BYTES).encode()
    if len(data) > MAX_FILE_BYTES:
        raise RecipeError(f"{where}: file larger than {MAX_FILE_BYTES} bytes")
    return data


def _step(raw: Any, where: str, index: int, default_user: str) -> Step:
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: a step is an object with one of {', '.join(ACTIONS)}")
    unknown = sorted(set(raw) - STEP_KEYS)
    if unknown:
        raise RecipeError(f"{where}: unknown field {unknown[0]!r}")
    actions = [k for k in ACTIONS if k in raw]
    if len(actions) != 1:
        raise RecipeError(f"{where}: a step has exactly one of {', '.join(ACTIONS)} (found {len(actions)})")
    kind = actions[0]
    name = _str(raw["name"], f"{where}.name", limit=200) if "name" in raw else ""
    step = Step(index=index, kind=kind, name=name)
    if kind == "run":
        step.run = _str(raw["run"], f"{where}.run", limit=MAX_SCRIPT)
        step.user = _user(raw.get("user", default_user), f"{where}.user")
        step.timeout_sec = _int(raw.get("timeout_sec", DEFAULT_STEP_TIMEOUT), f"{where}.timeout_sec", 1,
                                MAX_STEP_TIMEOUT)
        step.name = step.name or _short(step.run)
    elif kind == "env":
        step.env = _env(raw["env"], f"{where}.env")
        if not step.env:
            raise RecipeError(f"{where}.env: must set at least one variable")
        step.name = step.name or "env " + " ".join(step.env)
    elif kind == "workdir":
        step.path = _path(raw["workdir"], f"{where}.workdir")
        step.name = step.name or f"workdir {step.path}"
    else:
        step.path = _path(raw["file"], f"{where}.file")
        step.content = _content(raw, where)
        step.mode = _mode(raw.get("mode", "0644"), f"{where}.mode")
        step.owner = _user(raw.get("owner", ROOT), f"{where}.owner")
        step.name = step.name or f"file {step.path}"
    extra = {"run": {"user", "timeout_sec"}, "file": {"content", "content_b64", "mode", "owner"}}
    for key in ("user", "timeout_sec", "content", "content_b64", "mode", "owner"):
        if key in raw and key not in extra.get(kind, set()):
            raise RecipeError(f"{where}.{key}: not allowed in a {kind} step")
    return step


def _short(script: str) -> str:
    line = script.strip().splitlines()[0] if script.strip() else script
    return line if len(line) <= 60 else line[:57] + "..."


def _lines(raw: Any) -> list[dict[str, Any]]:
    """The reference's ``recipe`` line format → step objects."""
    if not isinstance(raw, list):
        raise RecipeError("recipe: must be an array of instruction lines")
    out: list[dict[str, Any]] = []
    user = ROOT
    for i, line in enumerate(raw):
        where = f"recipe[{i}]"
        text = _str(line, where, limit=MAX_SCRIPT).strip()
        verb, _, rest = text.partition(" ")
        rest = rest.strip()
        verb = verb.upper()
        if verb == "RUN" and rest:
            out.append({"run": rest, "user": user})
        elif verb == "USER" and rest:
            user = rest
        elif verb == "WORKDIR" and rest:
            out.append({"workdir": rest})
        elif verb == "ENV" and rest:
            key, sep, value = rest.partition("=")
            if not sep:
                key, _, value = rest.partition(" ")
            out.append({"env": {key.strip(): value.strip().strip('"')}})
        else:
            raise RecipeError(f"{where}: expected RUN, ENV, WORKDIR or USER followed by an argument")
    return out


def parse(doc: Any) -> Recipe:
    """Validate and normalise a recipe document (see the module docstring)."""
    if not isinstance(doc, dict):
        raise RecipeError("a recipe is a JSON object")
    if not doc:
        raise RecipeError("the recipe is empty")
    unknown = sorted(set(doc) - TOP_LEVEL)
    if unknown:
        raise RecipeError(f"{unknown[0]}: unknown field")
    if "name" not in doc:
        raise RecipeError("name: field required")
    name = _str(doc["name"], "name", limit=64)
    if not SAFE_NAME_RE.match(name):
        raise RecipeError(f"name: must match {SAFE_NAME_RE.pattern}")
    if "base" in doc and "base_template" in doc and doc["base"] != doc["base_template"]:
        raise RecipeError("base: give base or base_template, not both")
    base = _str(doc.get("base", doc.get("base_template", "minimal")), "base", limit=64)
    if not SAFE_NAME_RE.match(base):
        raise RecipeError(f"base: must match {SAFE_NAME_RE.pattern}")
    recipe = Recipe(name=name, base=base)
    recipe.description = _str(doc.get("description", ""), "description", empty=True, limit=2000)
    recipe.vcpus = _int(doc.get("vcpus", 1), "vcpus", 1, MAX_VCPUS)
    recipe.memory_mb = _int(doc.get("memory_mb", 512), "memory_mb", 128, MAX_MEMORY_MB)
    if doc.get("default_user"):
        recipe.default_user = _user(doc["default_user"], "default_user")
        if recipe.default_user == DEFAULT_USER:
            raise RecipeError("default_user: must be 'root' or a user name")
    if "env" in doc and "default_env" in doc:
        raise RecipeError("env: give env or default_env, not both")
    recipe.env = _env(doc.get("env", doc.get("default_env", {})), "env")
    if "metadata" in doc:
        labels = doc["metadata"]
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in labels.items()):
            raise RecipeError("metadata: must map strings to strings")
        recipe.metadata = {k: _str(v, f"metadata.{k}", empty=True, limit=256) for k, v in labels.items()}
    recipe.overwrite = _bool(doc.get("overwrite", False), "overwrite")
    recipe.skip_pre_post = _bool(doc.get("skip_pre_post", False), "skip_pre_post")

    raw_steps: list[tuple[str, Any]] = []
    files = doc.get("files") or {}
    if not isinstance(files, dict):
        raise RecipeError("files: must be an object of path → {content, mode}")
    for dest, spec in files.items():
        if not isinstance(spec, dict):
            raise RecipeError(f"files[{dest!r}]: must be an object with content and mode")
        raw_steps.append((f"files[{dest!r}]", {"file": dest, **spec}))
    if "steps" in doc and "recipe" in doc:
        raise RecipeError("steps: give steps or recipe, not both")
    if "steps" in doc:
        if not isinstance(doc["steps"], list):
            raise RecipeError("steps: must be an array")
        raw_steps += [(f"steps[{i}]", s) for i, s in enumerate(doc["steps"])]
    elif "recipe" in doc:
        raw_steps += [(f"recipe[{i}]", s) for i, s in enumerate(_lines(doc["recipe"]))]
    steps = [_step(raw, where, i + 1, ROOT) for i, (where, raw) in enumerate(raw_steps)]
    if "start" in doc and doc["start"] is not None:
        try:
            spec = template_start.parse_start_spec(doc["start"])
        except template_start.StartSpecError as exc:
            raise RecipeError("start: " + str(exc).removeprefix(f"{template_start.START_PATH}: ")) from exc
        if spec.user == DEFAULT_USER:
            spec.user = ""  # the runtime's default: the template's default user
        if spec.user and not USER_RE.match(spec.user):
            raise RecipeError("start.user: must be a user name")
        if spec.ready_port and "timeout_sec" not in (doc["start"].get("ready") or {}):
            spec.ready_timeout = DEFAULT_READY_TIMEOUT
        label = f"start: {_short(spec.cmd)}" + (f" (port {spec.ready_port})" if spec.ready_port else "")
        steps.append(Step(index=len(steps) + 1, kind="start", name=label, start=spec))
    if "check" in doc and "healthcheck" in doc:
        raise RecipeError("check: give check or healthcheck, not both")
    check = doc.get("check", doc.get("healthcheck"))
    if check:
        where = "check" if "check" in doc else "healthcheck"
        script = _str(check, where, limit=MAX_SCRIPT)
        steps.append(Step(index=len(steps) + 1, kind="check", name=f"check: {_short(script)}", run=script))
    if not steps:
        raise RecipeError("the recipe has no steps (give steps, files, start or check)")
    if len(steps) > MAX_STEPS:
        raise RecipeError(f"steps: at most {MAX_STEPS} steps")
    recipe.steps = steps
    return recipe


# --- shell ---------------------------------------------------------------------------------------


def as_user(script: str, *, user: str, exec_user: str, env: dict[str, str], cwd: str = "") -> str:
    """A ``/bin/sh -c`` command line that runs ``script`` as ``user`` with exactly ``env`` added, in ``cwd``
    (default: that user's home), from a shell running as ``exec_user`` (the build capsule's exec identity).

    root → other user: ``runuser``; other → anyone: ``sudo -n`` (the base templates give their default user
    passwordless sudo). ``sudo`` resets the environment, so the variables travel on ``env``'s command line.
    """
    inner = f"cd {shlex.quote(cwd)} && {script}" if cwd else f'cd "$HOME" 2>/dev/null; {script}'
    assignments = [shlex.quote(f"{k}={v}") for k, v in env.items()]
    tail = ["env", *assignments, "/bin/sh", "-c", shlex.quote(inner)]
    q = shlex.quote(user)
    if user == exec_user:
        prefix: list[str] = []
    elif exec_user == ROOT:
        home = f'"$(getent passwd {q} | cut -d: -f6)"'
        prefix = ["runuser", "-u", q, "--", "env", f"HOME={home}", f"USER={q}", f"LOGNAME={q}"]
    else:
        prefix = ["sudo", "-n", "-H", "-u", q, "--"]
    return "exec " + " ".join([*prefix, *tail])


def port_probe(port: int, timeout: float) -> str:
    """Wait (bash, inside the capsule) until ``port`` accepts a TCP connection on the capsule's own address —
    the one the port proxy uses — or 127.0.0.1 when the address cannot be found. Exit 0 when it answers."""
    return (
        f"deadline=$(( $(date +%s) + {int(timeout)} )); "
        "addr=$(hostname -I 2>/dev/null | cut -d' ' -f1); [ -n \"$addr\" ] || addr=127.0.0.1; "
        "while :; do "
        f"if (exec 3<>/dev/tcp/$addr/{port}) 2>/dev/null; then echo \"port {port} answers on $addr\"; exit 0; fi; "
        f"if [ $(date +%s) -ge $deadline ]; then echo \"port {port} did not answer on $addr within {int(timeout)}s\"; "
        "exit 1; fi; sleep 0.2; done"
    )
