"""The build record on the wire (``/v1/admin/builds*``): the fields of ``template_builds`` (control-plane.md
§3.12) with prefixed IDs, plus per-step status, timing and log tails.

Storage: ``recipe`` holds the normalised steps (``recipe.Step.to_json``); ``logs`` one record per step
(``StepState``); ``metadata`` the build's bookkeeping (``META_*`` keys) and the recipe's labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.builds.models import TemplateBuild
from app.core import clock, ids

STATUSES = ("pending", "running", "success", "failed", "cancelled")
FINISHED = ("success", "failed", "cancelled")
STEP_STATUSES = ("pending", "running", "success", "failed", "cancelled", "skipped")
DEFAULT_TAIL_LINES = 20
MAX_TAIL_LINES = 1000

# metadata keys (internal bookkeeping, not shown as the build's ``metadata``)
META_DESCRIPTION = "description"
META_LABELS = "labels"
META_BUILD_ENV = "build_env"
META_OVERWRITE = "overwrite"
META_CREATED_BY = "created_by"
META_CREATED_BY_EMAIL = "created_by_email"
META_PHASE = "phase"
META_FAILED_STEP = "failed_step"
META_CLEANED = "cleaned"
META_TEMPLATE = "template"
META_CANCELLED_BY = "cancelled_by"

# phases of a build (``phase`` on the wire)
PHASES = ("queued", "provisioning", "steps", "snapshot", "cleanup", "done")


@dataclass
class StepState:
    """One entry of ``template_builds.logs``."""

    step: int
    name: str
    kind: str
    status: str = "pending"
    started_at: str | None = None
    finished_at: str | None = None
    duration_ms: int | None = None
    exit_code: int | None = None
    error: str | None = None
    output: str = ""
    truncated: int = 0  # bytes dropped from the start of ``output`` (kept: the last MAX_LOG bytes)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> StepState:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


def tail(text: str, lines: int) -> list[str]:
    """The last ``lines`` lines of a log, with carriage-return progress lines collapsed to their last state."""
    if lines <= 0 or not text:
        return []
    rows = text.rstrip("\n").split("\n")[-lines:]
    return [row.rstrip("\r").rsplit("\r", 1)[-1] for row in rows]


def build_json(b: TemplateBuild, *, logs: bool = False, tail_lines: int = DEFAULT_TAIL_LINES) -> dict[str, Any]:
    meta: dict[str, Any] = dict(b.metadata_ or {})
    states = [StepState.from_json(s) for s in (b.logs or []) if isinstance(s, dict)]
    steps = []
    for s in states:
        entry = s.to_json()
        entry.pop("output", None)
        entry["log_tail"] = tail(s.output, tail_lines)
        steps.append(entry)
    recipe = []
    for raw in b.recipe or []:
        if isinstance(raw, dict):
            recipe.append({k: v for k, v in raw.items() if k != "content_b64"})
    failed = meta.get(META_FAILED_STEP)
    created_by = meta.get(META_CREATED_BY)
    body: dict[str, Any] = {
        "id": ids.encode(ids.BUILD, b.id),
        "name": b.name,
        "base_template": b.base_template,
        "status": b.status,
        "phase": meta.get(META_PHASE, "queued"),
        "current_step": b.current_step,
        "total_steps": b.total_steps,
        "recipe": recipe,
        "healthcheck": b.healthcheck,
        "vcpus": b.vcpus,
        "memory_mb": b.memory_mb,
        "default_user": b.default_user,
        "default_env": dict(b.default_env or {}),
        "skip_pre_post": b.skip_pre_post,
        "steps": steps,
        "error": b.error or None,
        "failed_step": failed if isinstance(failed, dict) else None,
        "sandbox_id": ids.encode(ids.CAPSULE, b.sandbox_id) if b.sandbox_id else None,
        "host_id": ids.encode(ids.HOST, b.host_id) if b.host_id else None,
        "template_id": str(b.template_id) if b.template_id else None,
        "template": meta.get(META_TEMPLATE),
        "team_id": ids.encode(ids.TEAM, b.team_id or ids.ZERO_UUID),
        "created_at": clock.iso(b.created_at),
        "started_at": clock.iso(b.started_at),
        "completed_at": clock.iso(b.completed_at),
        "created_by": created_by,
        "created_by_email": meta.get(META_CREATED_BY_EMAIL),
        "description": meta.get(META_DESCRIPTION, ""),
        "overwrite": bool(meta.get(META_OVERWRITE, False)),
        "cleaned_up": bool(meta.get(META_CLEANED, False)),
        "metadata": {str(k): str(v) for k, v in (meta.get(META_LABELS) or {}).items()},
    }
    if logs:
        body["logs"] = [{"step": s.step, "name": s.name, "status": s.status, "output": s.output,
                         "truncated": s.truncated} for s in states]
    return body
