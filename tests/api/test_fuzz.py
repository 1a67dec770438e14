"""Fuzz the 0.2.0 foundation operations: never a 5xx, every error is the ``{"error":{code,message}}`` envelope.

Cases come from schemathesis (positive and negative generation from the spec, derandomised, a few examples
per operation) plus hand-made malformed input: broken JSON, bad UTF-8, deep nesting, huge strings, wrong
types, random extra fields, oversized bodies. Generation is done up front, synchronously; the requests are
then sent through the in-process app on the test's event loop (so the app's asyncpg/Redis pools stay on one
loop). Authenticated operations are sent with a logged-in session cookie and the CSRF header, and once more
with an API key (session-only routes must refuse it cleanly).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from openapi.conformance import Checker
from openapi.spec import SPEC_PATH, Operation, load_spec
from tests.api.helpers import Platform
from tests.api.test_conformance import FOUNDATION

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

pytestmark = pytest.mark.timeout(120)

POSITIVE_EXAMPLES = 5
NEGATIVE_EXAMPLES = 8
_NUL_JSON = re.compile(r"(?<!\\)\\u0000")


@dataclass
class Request:
    operation: Operation
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    origin: str = ""


def _strip_nul(request: Request) -> Request:
    """NUL characters are fuzzed separately (see test_nul_characters_are_refused_cleanly)."""
    request.path = request.path.replace("%00", "%01")
    request.params = {k.replace("\x00", "\x01"): _denul(v) for k, v in request.params.items()}
    if request.content is not None:
        request.content = _NUL_JSON.sub(r"\\u0001", request.content.decode("latin-1")).encode("latin-1")
        request.content = request.content.replace(b"\x00", b"\x01")
    return request


def _denul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\x01")
    if isinstance(value, list):
        return [_denul(v) for v in value]
    return value


@functools.cache
def generated_cases() -> tuple[Request, ...]:
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_path(str(SPEC_PATH))
    spec = load_spec()
    out: list[Request] = []
    for operation_id in FOUNDATION:
        op = spec.by_id(operation_id)
        api_operation = schema[op.path][op.method]
        for mode, count in ((GenerationMode.POSITIVE, POSITIVE_EXAMPLES), (GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES)):
            cases: list[Any] = []
            sink = cases.append

            @settings(max_examples=count, derandomize=True, database=None, deadline=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(api_operation.as_strategy(generation_mode=mode))
            def collect(case: Any) -> None:
                sink(case)  # noqa: B023 - collect() runs right here, in this iteration

            collect()
            for index, case in enumerate(cases):
                out.append(_strip_nul(_from_case(op, case, f"{mode.value}#{index}")))
    return tuple(out)


def _from_case(op: Operation, case: Any, origin: str) -> Request:
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    headers = {k: v for k, v in kwargs.get("headers", {}).items()
               if k.lower() not in ("cookie", "x-csrf-token", "content-length", "connection", "accept-encoding")}
    content: bytes | None = None
    if "json" in kwargs:
        content = json.dumps(kwargs["json"]).encode()
    elif "data" in kwargs and kwargs["data"] is not None:
        data = kwargs["data"]
        content = data if isinstance(data, bytes) else str(data).encode("utf-8", "surrogatepass")
    path = str(httpx.URL(kwargs["url"]).raw_path.decode("ascii").split("?", 1)[0])
    return Request(op, op.method, path, dict(kwargs.get("params") or {}), headers, content, origin)


def malformed_cases() -> Iterator[Request]:
    """Hand-made bad input for every foundation operation."""
    spec = load_spec()
    for operation_id in FOUNDATION:
        op = spec.by_id(operation_id)
        path = re.sub(r"\{[^}]+\}", "x", op.path)
        if op.has_body:
            body_schema = spec.resolve(spec.resolve(spec.document["paths"][op.path][op.method.lower()]["requestBody"])
                                       ["content"]["application/json"]["schema"])
            props = list((body_schema.get("properties") or {}).keys()) or ["name"]
            bodies: list[tuple[str, bytes]] = [
                ("truncated JSON", b'{"a": '),
                ("bad UTF-8", b"\xff\xfe\xfd{}"),
                ("lone surrogate", b'{"' + props[0].encode() + b'": "\xed\xa0\x80"}'),
                ("escaped lone surrogate", b'{"' + props[0].encode() + b'": "\\ud800"}'),
                ("deep nesting", b"[" * 20000 + b"]" * 20000),
                ("deep object", b'{"a":' * 5000 + b"1" + b"}" * 5000),
                ("null", b"null"),
                ("array", b"[]"),
                ("string", b'"hello"'),
                ("huge number", b"1e999999"),
                ("NaN", b'{"' + props[0].encode() + b'": NaN}'),
                ("duplicate keys", b'{"' + props[0].encode() + b'": 1, "' + props[0].encode() + b'": "x"}'),
                ("over the body limit", b'{"a": "' + b"x" * (1 << 20) + b'"}'),
            ]
            for prop in props:
                bodies.append((f"huge {prop}", json.dumps({p: "x" * 300_000 if p == prop else "a@b.co"
                                                              for p in props}).encode()))
                wrong_values: tuple[Any, ...] = (None, 12, 1.5, True, [], {}, "\u202e\U0001f600" * 50)
                for wrong in wrong_values:
                    bodies.append((f"{prop}={wrong!r:.20}", json.dumps({prop: wrong}).encode()))
            extra = {**{p: "a@b.co" for p in props}, "is_admin": True, "role": "owner", "__proto__": {},
                     "x" * 1000: [1] * 100}
            bodies.append(("extra fields", json.dumps(extra).encode()))
            for label, body in bodies:
                yield Request(op, op.method, path, content=body, headers={"content-type": "application/json"},
                              origin=label)
            yield Request(op, op.method, path, content=b'{"a":1}', headers={"content-type": "text/plain"},
                          origin="text/plain body")
            yield Request(op, op.method, path, origin="no body")
        if op.path_params:
            for label, value in (("bad UTF-8 in path", "%FF%FE"), ("huge path param", "x" * 5000),
                                 ("dot segments", "..%2F..%2Fv1%2Fme"), ("prefix only", "team-"),
                                 ("out-of-range id", "usr-zzzzzzzzzzzzzzzzzzzzzzzzz")):
                bad = re.sub(r"\{[^}]+\}", value, op.path)
                yield Request(op, op.method, bad, origin=label)
        yield Request(op, op.method, path, params={"email": "x" * 10_000, "page": "-1", "per_page": "1e9",
                                                    "\u00ff": "\udcff".encode("utf-8", "surrogatepass").decode(
                                                        "latin-1")}, origin="junk query")


@dataclass
class Actor:
    http: httpx.AsyncClient
    csrf: str
    user_id: str
    team_id: str
    email: str
    api_key: str = ""


async def _actor(platform: Platform, app: FastAPI) -> Actor:
    client = await platform.user()
    r = await client.post("/v1/api-keys", json={"name": "fuzz"})
    assert r.status_code == 201, r.text
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                             base_url="http://testserver", cookies=client.http.cookies)
    platform.clients.append(client)
    actor = Actor(http, client.http.cookies["wrenn_csrf"], client.user_id, client.team_id, client.email,
                  r.json()["key"])
    return actor


def _real_path(op: Operation, actor: Actor, victim: Actor) -> str:
    path = op.path
    if path.startswith("/v1/admin/users/"):
        return path.replace("{id}", victim.user_id)
    if path.startswith("/v1/admin/teams/"):
        return path.replace("{id}", victim.team_id)
    return (path.replace("{provider}", "github").replace("{uid}", victim.user_id)
            .replace("/v1/teams/{id}", f"/v1/teams/{actor.team_id}").replace("{id}", "0" * 64))


class Fuzzer:
    def __init__(self, platform: Platform, app: FastAPI) -> None:
        self.platform = platform
        self.app = app
        self.checker = Checker()
        self.failures: list[str] = []  # 5xx, or an error that is not the envelope
        self.nonconforming: list[str] = []  # anything else the conformance checker objects to
        self.sent = 0
        self.statuses: dict[str, Counter[int]] = {}
        self.anon = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                      base_url="http://testserver")

    async def send(self, request: Request, actor: Actor | None, *, api_key: bool = False) -> httpx.Response:
        headers = dict(request.headers)
        client = self.anon
        if actor is not None and api_key:
            headers["X-API-Key"] = actor.api_key
        elif actor is not None:
            client = actor.http
            if request.method not in ("GET", "HEAD"):
                headers["X-CSRF-Token"] = actor.csrf
        url = httpx.URL(request.path) if "%" in request.path else request.path
        response = await client.request(request.method, url, params=request.params or None, headers=headers,
                                        content=request.content)
        self.sent += 1
        self.statuses.setdefault(request.operation.operation_id, Counter())[response.status_code] += 1
        self.verify(request, response, "api-key" if api_key else "session" if actor else "anonymous")
        return response

    def verify(self, request: Request, response: httpx.Response, how: str) -> None:
        where = (f"{request.operation.operation_id} [{request.origin}, {how}] {request.method} {request.path[:80]}"
                 f" params={str(request.params)[:80]} body={(request.content or b'')[:80]!r}")
        full = self.checker.check(request.method, request.operation.path, response.status_code, response.content,
                                  dict(response.headers))
        if not full.ok:
            self.nonconforming.append(f"{where}: {'; '.join(full.problems)}")
        if response.status_code >= 500:
            self.failures.append(f"{where} → {response.status_code} {response.text[:200]}")
        elif response.status_code >= 400:
            problems = self.checker.error_problems(response.content, dict(response.headers))
            if problems:
                self.failures.append(f"{where} → {response.status_code}: {'; '.join(problems)}")

    async def close(self) -> None:
        await self.anon.aclose()


@pytest.fixture
async def fuzzer(platform: Platform, app: FastAPI) -> Any:
    f = Fuzzer(platform, app)
    yield f
    await f.close()


async def test_fuzz_foundation_operations(platform: Platform, app: FastAPI, fuzzer: Fuzzer) -> None:
    admin = await _actor(platform, app)  # the first user is the platform admin
    cases = [*generated_cases(), *malformed_cases()]
    by_op: dict[str, list[Request]] = {}
    for case in cases:
        by_op.setdefault(case.operation.operation_id, []).append(case)
    for operation_id in FOUNDATION:
        op = load_spec().by_id(operation_id)
        needs_victim = "{uid}" in op.path or op.path.startswith(("/v1/admin/users/", "/v1/admin/teams/"))
        victim = await _actor(platform, app) if needs_victim else admin
        # Operations that may end their own session or account get a fresh actor; admin ones act as the admin.
        actor = admin if op.path.startswith("/v1/admin/") else await _actor(platform, app)
        for index, request in enumerate(by_op.get(operation_id, [])):
            if request.origin.startswith("positive") and index % 2 == 0:
                request = Request(op, op.method, _real_path(op, actor, victim), request.params, request.headers,
                                  request.content, request.origin + " (real ids)")
            await fuzzer.send(request, actor if op.security else None)
            if op.security and index % 4 == 0:
                await fuzzer.send(request, actor, api_key=True)
                await fuzzer.send(request, None)
        for used in {id(actor): actor, id(victim): victim}.values():
            if used is not admin:
                await used.http.aclose()
    await admin.http.aclose()
    if os.environ.get("WRENN_FUZZ_STATS"):
        for operation_id, counts in fuzzer.statuses.items():
            print(f"{operation_id:<22} {dict(sorted(counts.items()))}")
    assert fuzzer.sent > 1000
    assert not fuzzer.failures, f"{len(fuzzer.failures)} bad responses:\n" + "\n".join(fuzzer.failures[:40])
    # Stronger than "no 5xx": every status is documented (or in UNDOCUMENTED_STATUSES) and every body validates.
    assert not fuzzer.nonconforming, "\n".join(fuzzer.nonconforming[:40])


NUL_PROBES = (
    ("PATCH", "/v1/me", {"name": "a\x00b"}, None),
    ("GET", "/v1/users/search", None, {"email": "a\x00b@x"}),
    ("DELETE", "/v1/me/sessions/%00", None, None),
    ("POST", "/v1/auth/login", {"email": "a\x00@b.co", "password": "xxxxxxxxxx"}, None),
    ("POST", "/v1/me/password/reset", {"email": "a\x00@b.co"}, None),
    ("POST", "/v1/api-keys", {"name": "\x00"}, None),
    ("POST", "/v1/teams", {"name": "a\x00b"}, None),
    ("POST", "/v1/auth/signup", {"email": "nul@example.com", "password": "xxxxxxxxxx", "name": "a\x00b"}, None),
    ("POST", "/v1/auth/activate", {"token": "\x00"}, None),
    ("POST", "/v1/auth/switch-team", {"team_id": "team-\x00"}, None),
)


async def test_nul_characters_are_refused_cleanly(platform: Platform, app: FastAPI, fuzzer: Fuzzer) -> None:
    actor = await _actor(platform, app)
    spec = load_spec()
    for method, path, body, params in NUL_PROBES:
        op = spec.match(method, path) or spec.by_id("revokeSession")
        content = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if content else {}
        await fuzzer.send(Request(op, method, path, params or {}, headers, content, "NUL"), actor)
    await actor.http.aclose()
    assert not fuzzer.failures, "\n".join(fuzzer.failures)
