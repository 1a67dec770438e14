"""Agent (Connect) errors → API errors (control-plane.md §11), with the SDK's refinements."""

from __future__ import annotations

from app.core.errors import ApiError
from app.hostagent.client import AgentError

_MISSING_PATH = ("no such file or directory", "not found", "does not exist")


def agent_failure(exc: AgentError, *, path_op: bool = False, mkdir: bool = False) -> ApiError:
    code, message = exc.code, exc.message or exc.code
    text = message.lower()
    if mkdir and (code == "already_exists" or "already exists" in text or "file exists" in text):
        return ApiError(message, code="already_exists", status=409)
    if code == "not_found" or (path_op and any(m in text for m in _MISSING_PATH)):
        return ApiError(message, code="not_found", status=404)
    if code == "invalid_argument":
        return ApiError(message, code="invalid_request", status=400)
    if code == "deadline_exceeded":
        return ApiError(message, code="timeout", status=504)
    if code in ("failed_precondition", "already_exists"):
        return ApiError(message, code="conflict", status=409)
    if code == "permission_denied":
        return ApiError(message, code="forbidden", status=403)
    if code == "unavailable":
        return ApiError(message, code="host_unavailable", status=503)
    if code == "unimplemented":
        return ApiError(message, code="agent_error", status=501)
    return ApiError(message, code="agent_error", status=502)
