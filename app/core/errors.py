"""Typed domain errors. One handler (app.main) maps them to ``{"error":{"code","message"}}``."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message or self.code.replace("_", " ")
        if code:
            self.code = code
        if status:
            self.status = status
        self.headers = headers or {}
        # ``extra`` keys go inside ``error`` (and ``top_level`` ones beside it) — e.g. sandbox_ids.
        self.extra = extra or {}
        self.top_level: dict[str, Any] = {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, **self.extra}
        return {"error": error, **self.top_level}


class InvalidRequest(ApiError):
    status = 400
    code = "invalid_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class InvalidState(ApiError):
    status = 409
    code = "invalid_state"


class TooLarge(ApiError):
    status = 413
    code = "too_large"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"


class AgentError(ApiError):
    status = 502
    code = "agent_error"


class HostUnavailable(ApiError):
    status = 503
    code = "host_unavailable"


class Timeout(ApiError):
    status = 504
    code = "timeout"
