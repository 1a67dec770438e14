"""HTTP plumbing shared by every router: the error envelope, body limits, trailing slashes."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import ApiError

log = logging.getLogger("wrenn.http")

_STATUS_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}

UPLOAD_LIMIT = 100 * 1024 * 1024


class ORJSONResponse(JSONResponse):
    """JSON rendered with orjson (fast, and RFC 3339 datetimes)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> ORJSONResponse:
    return ORJSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts)


def validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    kind = first.get("type", "")
    if kind in ("json_invalid", "json_type"):
        return "request body is not valid JSON"
    name = _field_name(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value"))
    if kind == "missing":
        return f"{name or 'body'}: field required"
    if kind == "model_attributes_type" or (kind == "dict_type" and not name):
        return "request body must be a JSON object"
    return f"{name}: {msg}" if name else msg


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> ORJSONResponse:
        return ORJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> ORJSONResponse:
        return error_response(400, "invalid_request", validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> ORJSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "internal_error" if exc.status_code >= 500 else "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = "route not found"
        if exc.status_code == 405:
            message = "method not allowed"
        return error_response(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> ORJSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error")


def _body_limit(path: str) -> int | None:
    if path.endswith("/files/stream/write"):
        return None  # streaming uploads are unlimited by design
    if path.endswith("/files/write"):
        return UPLOAD_LIMIT + 1024 * 1024  # multipart overhead; the route enforces 100 MB exactly
    return 0  # the JSON limit from settings


class BodyGuardMiddleware:
    """Normalise trailing slashes and cap request bodies before anything parses them.

    A pure ASGI middleware so large bodies are refused while streaming, without buffering them.
    """

    def __init__(self, app: ASGIApp, json_limit: int) -> None:
        self.app = app
        self.json_limit = json_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            scope = dict(scope, path=path.rstrip("/") or "/")
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in path or b"%00" in scope.get("query_string", b""):
            await _send_error(send, 400, "invalid_request", "NUL characters are not allowed in URLs")
            return
        limit = _body_limit(scope["path"])
        if limit == 0:
            limit = self.json_limit
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_too_large(send, limit)
            return
        await self.app(scope, _limited_receive(receive, limit), send)


class _BodyTooLarge(Exception):
    pass


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _limited_receive(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise ApiError(f"request body exceeds {limit} bytes", code="too_large", status=413)
        return message

    return wrapped


async def _send_too_large(send: Send, limit: int) -> None:
    await _send_error(send, 413, "too_large", f"request body exceeds {limit} bytes")


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
