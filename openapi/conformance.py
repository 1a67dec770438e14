"""Check responses against the Wrenn API 0.2.0 spec.

For one response (method, path, status, body, headers) :class:`Checker` asserts that

a. the operation exists in the spec (a concrete URL is mapped back to its template; a known path with an
   unknown method must be a 405 envelope);
b. the status is documented for the operation, or is one of the :data:`UNDOCUMENTED_STATUSES` (the one
   explicit table of statuses we answer although the spec omits them, each with its reason);
c. the body matches: a JSON body validates against the documented schema (``$ref``s resolved, OpenAPI
   3.0-style ``nullable: true`` read as "null allowed", ``date-time`` checked as RFC 3339); every 4xx/5xx is
   the error envelope ``{"error": {"code": str, "message": str}}`` and validates against ``Error``; 204 has
   no body; 3xx has a ``Location``.

:class:`ConformanceRecorder` applies the checker to every response a test sees, either as ASGI middleware
(``recorder.asgi(app)`` — catches every client, including ones helpers create) or as an httpx response hook
(``recorder.wrap(client)``). It raises on the first non-conforming response (``raise_on_failure``) or
collects failures for ``assert_ok()``, and remembers which operations answered which statuses.
"""

from __future__ import annotations

import copy
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from openapi.spec import Operation, Spec, load_spec, normalize_path

SPEC_URI = "urn:wrenn-openapi-0.2.0"


# --------------------------------------------------------------------------------------------------------
# Statuses the app may answer although the spec does not list them for the operation. Keep this small and
# explicit: anything not here (and not documented) is a conformance failure. All of them carry the error
# envelope. 5xx is never allowed unless documented.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deviation:
    status: int
    scope: str  # which operations, in words
    reason: str
    applies: Callable[[Operation], bool] = field(repr=False, compare=False)


def _secured(op: Operation) -> bool:
    return bool(op.security)


def _session(op: Operation) -> bool:
    return "sessionAuth" in op.security


def _only(*operation_ids: str) -> Callable[[Operation], bool]:
    return lambda op: op.operation_id in operation_ids


UNDOCUMENTED_STATUSES: tuple[Deviation, ...] = (
    Deviation(400, "every operation",
              "malformed input (body not JSON / wrong types / over field limits, malformed prefixed IDs in the "
              "path, bad query values) → 400 invalid_request (contract §2.1, §17, §18)", lambda op: True),
    Deviation(401, "operations with a security requirement",
              "missing, invalid or expired credential: session cookie, X-API-Key or X-Host-Token (§4.2–4.6)",
              _secured),
    Deviation(403, "session-authenticated operations",
              "CSRF double-submit failure on non-GET (§4.2); non-admin on /v1/admin/** (§4.4); team scope "
              "'use switch-team first' and role checks (§5.1); session without a team → no_team (§4.4)",
              _session),
    Deviation(403, "login", "account_not_activated / account_disabled (§4.1)", _only("login")),
    Deviation(404, "operations with path parameters",
              "the addressed resource (team, member, user, key, session, provider…) does not exist or is not "
              "visible to the caller", lambda op: bool(op.path_params)),
    Deviation(413, "every operation",
              "request body over WRENN_MAX_JSON_BODY, refused by BodyGuardMiddleware before routing (§17)",
              lambda op: True),
    Deviation(429, "login", "failed-login throttling per email and per IP (WRENN_LOGIN_MAX_FAILURES*)",
              _only("login")),
)


def undocumented_reason(op: Operation, status: int) -> str | None:
    for deviation in UNDOCUMENTED_STATUSES:
        if deviation.status == status and deviation.applies(op):
            return deviation.reason
    return None


# --------------------------------------------------------------------------------------------------------
# Schema plumbing
# --------------------------------------------------------------------------------------------------------


def _nullable_to_31(node: Any, require_properties: bool) -> Any:
    """Rewrite OpenAPI 3.0 ``nullable: true`` into JSON Schema 2020-12; optionally require all properties."""
    if isinstance(node, list):
        return [_nullable_to_31(item, require_properties) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable_to_31(value, require_properties) for key, value in node.items()}
    if require_properties and isinstance(out.get("properties"), dict) and "required" not in out:
        out["required"] = [name for name, sub in node["properties"].items()
                           if not (isinstance(sub, dict) and (sub.get("nullable") or _allows_null(sub)))]
    if out.pop("nullable", False) is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        elif isinstance(kind, list):
            if "null" not in kind:
                out["type"] = [*kind, "null"]
        else:  # $ref / allOf / oneOf … without a type: wrap
            return {"anyOf": [out, {"type": "null"}]}
    return out


def _allows_null(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "null" or (isinstance(kind, list) and "null" in kind)


FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if "T" not in value.upper():
        raise ValueError(f"{value!r} is not RFC 3339 (no 'T')")
    parsed = datetime.fromisoformat(value.replace("z", "Z"))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return True


@FORMATS.checks("date", raises=ValueError)
def _is_date(value: object) -> bool:
    if isinstance(value, str):
        date.fromisoformat(value)
    return True


class SchemaValidator:
    """Validates instances against spec locations (JSON pointers), with ``$ref``s resolved in the spec."""

    def __init__(self, spec: Spec, *, require_properties: bool = False) -> None:
        document = _nullable_to_31(copy.deepcopy(spec.document), require_properties)
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
        self._cache: dict[str, Draft202012Validator] = {}

    def validator(self, pointer: str) -> Draft202012Validator:
        if pointer not in self._cache:
            self._cache[pointer] = Draft202012Validator(
                {"$ref": f"{SPEC_URI}#{pointer}"}, registry=self.registry, format_checker=FORMATS
            )
        return self._cache[pointer]

    def errors(self, pointer: str, instance: Any) -> list[str]:
        found = sorted(self.validator(pointer).iter_errors(instance), key=lambda e: list(e.absolute_path))
        return [f"at {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in found[:5]]


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _media_matches(actual: str, documented: str) -> bool:
    if documented in ("*/*", actual):
        return True
    if documented.endswith("/*"):
        return actual.startswith(documented[:-1])
    return False


# --------------------------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------------------------


class ConformanceError(AssertionError):
    pass


@dataclass
class Checked:
    method: str
    path: str
    status: int
    operation: Operation | None
    problems: list[str]
    deviation: str | None = None  # the reason, when the status is undocumented but allowed

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        where = f"{self.method} {self.path} → {self.status}"
        if self.operation:
            where += f" [{self.operation.operation_id}]"
        return where + ("" if self.ok else ": " + "; ".join(self.problems))


class Checker:
    def __init__(self, spec: Spec | None = None, *, require_properties: bool = False) -> None:
        self.spec = spec or load_spec()
        self.schemas = SchemaValidator(self.spec, require_properties=require_properties)

    def operation_for(self, method: str, path: str) -> Operation | None:
        """By spec template (``/v1/teams/{id}``, any parameter names) or by concrete path."""
        method = "GET" if method.upper() == "HEAD" else method.upper()
        if "{" in path:
            return self.spec.find(method, path)
        return self.spec.match(method, normalize_path(path))

    def check(
        self, method: str, path: str, status: int, body: bytes | None, headers: Mapping[str, str] | None = None
    ) -> Checked:
        """Check one response. ``body=None`` means "not captured" (e.g. a stream): only status and headers."""
        path = path.split("?", 1)[0]
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        op = self.operation_for(method, path)
        problems: list[str] = []
        result = Checked(method.upper(), path, status, op, problems)
        if op is None:
            if self.spec.match_path(normalize_path(path)) or "{" in path:
                if status != 405:
                    problems.append(f"{method.upper()} is not an operation of this path in the spec, "
                                    f"expected 405, got {status}")
                self._check_error(body, headers, problems)
            else:
                problems.append("no spec operation matches this path")
            return result

        spec_response = self._documented(op, status)
        if spec_response is None:
            result.deviation = undocumented_reason(op, status)
            if result.deviation is None:
                documented = ", ".join(sorted(op.responses))
                problems.append(f"status {status} is not documented for {op.operation_id} "
                                f"(documented: {documented}) and is not in UNDOCUMENTED_STATUSES")
            if status >= 400 or result.deviation is not None:
                self._check_error(body, headers, problems)
            return result

        if status >= 400:
            self._check_error(body, headers, problems)
        if status == 204 or status == 304:
            if body:
                problems.append(f"{status} must have no body, got {len(body)} bytes")
            return result
        if 300 <= status < 400 and not headers.get("location"):
            problems.append(f"{status} without a Location header")
        content = self.spec.resolve(spec_response).get("content") or {}
        if not content:
            return result
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if body is not None and len(body) == 0 and status < 300:
            problems.append(f"documented body ({', '.join(content)}) but the response is empty")
            return result
        matched = next((m for m in content if _media_matches(media, m)), None)
        if matched is None:
            problems.append(f"content-type {media or '(none)'} is not documented ({', '.join(content)})")
            return result
        if body is None or not (matched == "application/json" or matched.endswith("+json")):
            return result
        try:
            instance = json.loads(body)
        except ValueError as exc:
            problems.append(f"body is not valid JSON: {exc}")
            return result
        if "schema" in content[matched]:
            pointer = self._response_pointer(op, status) + f"/content/{_escape(matched)}/schema"
            problems.extend(self.schemas.errors(pointer, instance))
        return result

    def _documented(self, op: Operation, status: int) -> Any:
        for key in (str(status), f"{status // 100}XX", f"{status // 100}xx"):
            if key in op.responses:
                return op.responses[key]
        if 200 <= status < 300 or "default" not in op.responses:
            return None
        return op.responses["default"]

    def _response_pointer(self, op: Operation, status: int) -> str:
        key = next(k for k in (str(status), f"{status // 100}XX", f"{status // 100}xx", "default")
                   if k in op.responses)
        pointer = f"/paths/{_escape(op.path)}/{op.method.lower()}/responses/{_escape(key)}"
        node = self.spec.pointer(pointer)
        while isinstance(node, dict) and "$ref" in node:  # components/responses/…
            pointer = node["$ref"][1:]
            node = self.spec.pointer(pointer)
        return pointer

    def error_problems(self, body: bytes | None, headers: Mapping[str, str] | None = None) -> list[str]:
        """What is wrong with an error response's body (empty list: a valid envelope)."""
        problems: list[str] = []
        self._check_error(body, {k.lower(): v for k, v in (headers or {}).items()}, problems)
        return problems

    def _check_error(self, body: bytes | None, headers: Mapping[str, str], problems: list[str]) -> None:
        if body is None:
            return
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            problems.append(f"error response content-type is {media or '(none)'}, not application/json")
        try:
            instance = json.loads(body)
        except ValueError:
            problems.append(f"error body is not JSON: {body[:120]!r}")
            return
        envelope = instance.get("error") if isinstance(instance, dict) else None
        if not isinstance(envelope, dict):
            problems.append(f"error body is not the envelope {{'error': {{...}}}}: {str(instance)[:200]}")
            return
        for key in ("code", "message"):
            if not isinstance(envelope.get(key), str) or not envelope.get(key):
                problems.append(f"error.{key} is not a non-empty string: {envelope.get(key)!r}")
        problems.extend(self.schemas.errors("/components/schemas/Error", instance))


# --------------------------------------------------------------------------------------------------------
# The recorder
# --------------------------------------------------------------------------------------------------------

IGNORED = frozenset({"/health", "/openapi.yaml", "/openapi.json", "/docs"})


class ConformanceRecorder:
    """Checks every response it sees; remembers which operations answered which statuses."""

    def __init__(self, spec: Spec | None = None, *, raise_on_failure: bool = True,
                 require_properties: bool = False, ignore_paths: Iterable[str] = IGNORED) -> None:
        self.checker = Checker(spec, require_properties=require_properties)
        self.spec = self.checker.spec
        self.raise_on_failure = raise_on_failure
        self.ignore_paths = frozenset(ignore_paths)
        self.checked: list[Checked] = []
        self.seen: dict[str, Counter[int]] = defaultdict(Counter)

    # -- feeding -------------------------------------------------------------------------------------
    def record(self, method: str, path: str, status: int, body: bytes | None,
               headers: Mapping[str, str] | None = None) -> Checked | None:
        if normalize_path(path.split("?", 1)[0]) in self.ignore_paths:
            return None
        result = self.checker.check(method, path, status, body, headers)
        self.checked.append(result)
        if result.operation is not None:
            self.seen[result.operation.operation_id][status] += 1
        if not result.ok and self.raise_on_failure:
            raise ConformanceError(str(result))
        return result

    async def on_response(self, response: Any) -> None:
        """httpx response hook (``AsyncClient(event_hooks={"response": [recorder.on_response]})``)."""
        await response.aread()
        request = response.request
        self.record(request.method, request.url.path, response.status_code, response.content,
                    dict(response.headers))

    def wrap(self, client: Any) -> Any:
        """Attach to an ``httpx.AsyncClient`` or anything with one in ``.http`` (tests' ``Client``)."""
        http = getattr(client, "http", client)
        hooks = http.event_hooks
        hooks["response"] = [*hooks.get("response", []), self.on_response]
        http.event_hooks = hooks
        return client

    def asgi(self, app: Any) -> Any:
        """ASGI middleware around ``app`` checking every HTTP response that passes through it."""
        recorder = self

        async def middleware(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            state: dict[str, Any] = {"status": 0, "headers": {}, "body": bytearray(), "stream": False}

            async def capture(message: Any) -> None:
                if message["type"] == "http.response.start":
                    state["status"] = message["status"]
                    state["headers"] = {k.decode("latin-1"): v.decode("latin-1")
                                        for k, v in message.get("headers", [])}
                    ctype = state["headers"].get("content-type", "")
                    state["stream"] = ctype.startswith("text/event-stream")
                    if state["stream"]:  # never ends: check status and headers now
                        recorder.record(scope["method"], scope["path"], state["status"], None, state["headers"])
                elif message["type"] == "http.response.body" and not state["stream"]:
                    state["body"] += message.get("body", b"")
                await send(message)
                if (message["type"] == "http.response.body" and not message.get("more_body", False)
                        and not state["stream"]):
                    recorder.record(scope["method"], scope["path"], state["status"], bytes(state["body"]),
                                    state["headers"])

            await app(scope, receive, capture)

        # Keep attribute access (state, routes…) working for code that treats this as the app.
        class _Wrapped:
            def __init__(self) -> None:
                self.__wrapped__ = app

            async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                await middleware(scope, receive, send)

            def __getattr__(self, name: str) -> Any:
                return getattr(app, name)

        return _Wrapped()

    # -- asserting -----------------------------------------------------------------------------------
    @property
    def failures(self) -> list[Checked]:
        return [c for c in self.checked if not c.ok]

    def assert_ok(self) -> None:
        if self.failures:
            raise ConformanceError("non-conforming responses:\n  " + "\n  ".join(map(str, self.failures)))

    def assert_covered(self, operation_ids: Iterable[str], *, success: bool = False) -> None:
        """Every operation answered at least once (with a documented 1xx–3xx status when ``success``)."""
        missing = []
        for op_id in operation_ids:
            statuses = self.seen.get(op_id, Counter())
            if success:
                documented = {int(s) for s in self.spec.by_id(op_id).responses if s.isdigit() and int(s) < 400}
                if not documented & set(statuses):
                    missing.append(f"{op_id} (saw {sorted(statuses) or 'nothing'})")
            elif not statuses:
                missing.append(op_id)
        if missing:
            raise ConformanceError("operations not exercised: " + ", ".join(missing))

    def deviations_seen(self) -> list[Checked]:
        return [c for c in self.checked if c.deviation is not None]
