"""The spec tools themselves: route walking, URL → template matching, the conformance checker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, WebSocket
from starlette.routing import Mount, Route

from openapi.conformance import UNDOCUMENTED_STATUSES, Checker, ConformanceError, ConformanceRecorder
from openapi.coverage import coverage, iter_app_routes
from openapi.spec import load_spec, normalize_path

ROOT = Path(__file__).resolve().parents[2]
JSON = {"content-type": "application/json"}


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _err(code: str = "invalid_request", message: str = "bad") -> bytes:
    return _json({"error": {"code": code, "message": message}})


def test_spec_has_111_operations_and_unique_ids() -> None:
    spec = load_spec()
    assert len(spec) == 111
    assert len({op.operation_id for op in spec.operations}) == 111


def test_normalize_path() -> None:
    assert normalize_path("/v1/teams/{team_id}/members/{uid}/") == "/v1/teams/{}/members/{}"
    assert normalize_path("/files/{rest:path}") == "/files/{}"
    assert normalize_path("/") == "/"


def test_match_prefers_literal_segments() -> None:
    spec = load_spec()
    assert spec.match("GET", "/v1/capsules/stats").operation_id == "getCapsuleStats"  # type: ignore[union-attr]
    assert spec.match("GET", "/v1/capsules/cl-abc").operation_id == "getCapsule"  # type: ignore[union-attr]
    assert spec.match("POST", "/v1/hosts/register").operation_id == "registerHost"  # type: ignore[union-attr]
    assert spec.match("POST", "/v1/hosts/host-1/token").operation_id == "regenerateHostToken"  # type: ignore
    assert spec.match("PUT", "/v1/teams/team-1") is None
    assert spec.find("get", "/v1/teams/{team_id}").operation_id == "getTeam"  # type: ignore[union-attr]


def test_route_walker_sees_included_routers_mounts_and_websockets() -> None:
    inner = APIRouter(prefix="/inner")

    @inner.get("/{thing_id}")
    async def get_thing(thing_id: str) -> dict[str, str]:
        return {}

    outer = APIRouter(prefix="/v1")
    outer.include_router(inner)

    @outer.websocket("/ws/{x}")
    async def ws(websocket: WebSocket, x: str) -> None:
        pass

    async def plain(request: Any) -> None:
        pass

    app = FastAPI()
    app.include_router(outer)
    app.routes.append(Mount("/m", routes=[Route("/r", plain, methods=["POST"])]))
    found = {(r.method, r.path) for r in iter_app_routes(app)}
    assert ("GET", "/v1/inner/{thing_id}") in found
    assert ("GET", "/v1/ws/{x}") in found
    assert ("POST", "/m/r") in found
    assert not any(method == "HEAD" for method, _ in found)


def test_coverage_counts_and_extras() -> None:
    app = FastAPI()

    @app.get("/v1/teams/{team_id}")
    async def get_team(team_id: str) -> None:
        pass

    @app.post("/v1/not-in-spec")
    async def extra() -> None:
        pass

    @app.get("/health")
    async def health() -> None:
        pass

    implemented, missing, extra_routes = coverage(app)
    assert [op.operation_id for op in implemented] == ["getTeam"]
    assert len(missing) == 110
    assert [str(r) for r in extra_routes] == ["POST /v1/not-in-spec"]


def test_coverage_cli_runs_without_a_database() -> None:
    out = subprocess.run([sys.executable, "-m", "openapi.coverage"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.startswith("implemented ") and "/111 operations" in out.splitlines()[0]


@pytest.fixture(scope="module")
def checker() -> Checker:
    return Checker(require_properties=True)


def test_valid_body_passes(checker: Checker) -> None:
    body = {"team": {"id": "team-1", "name": "T", "slug": "a1b2c3-d4e5f6", "created_at": "2024-01-01T00:00:00Z"},
            "members": [{"user_id": "usr-1", "email": "a@b.c", "role": "owner",
                         "joined_at": "2024-01-01T00:00:00.123+00:00"}]}
    result = checker.check("GET", "/v1/teams/team-1", 200, _json(body), JSON)
    assert result.ok, result


def test_schema_violations_are_reported(checker: Checker) -> None:
    body = {"team": {"id": 1, "name": "T", "slug": "s", "created_at": "2024-01-01 00:00"},
            "members": [{"user_id": "u", "email": "e", "role": "boss", "joined_at": "2024-01-01T00:00:00Z"}]}
    problems = " ".join(checker.check("GET", "/v1/teams/team-1", 200, _json(body), JSON).problems)
    assert "team/id" in problems and "date-time" in problems and "boss" in problems


def test_nullable_allows_null_but_not_wrong_types(checker: Checker) -> None:
    key = {"id": "key-1", "team_id": "team-1", "name": "n", "key_prefix": "wrn_ab12cd",
           "created_at": "2024-01-01T00:00:00Z", "last_used": None}
    assert checker.check("GET", "/v1/api-keys", 200, _json([key]), JSON).ok
    assert not checker.check("GET", "/v1/api-keys", 200, _json([{**key, "last_used": 5}]), JSON).ok
    # require_properties: non-nullable properties must be present, nullable ones may be omitted
    assert not checker.check("GET", "/v1/api-keys", 200, _json([{"id": "key-1"}]), JSON).ok


def test_status_rules(checker: Checker) -> None:
    # documented error
    assert checker.check("POST", "/v1/auth/signup", 409, _err("email_taken"), JSON).ok
    # undocumented but in the table: 401 on a secured operation, 400 anywhere
    result = checker.check("GET", "/v1/me", 401, _err("unauthorized"), JSON)
    assert result.ok and result.deviation
    assert checker.check("POST", "/v1/me/password/reset", 400, _err(), JSON).ok
    # 401 on a public operation that does not document it is not allowed
    assert not checker.check("POST", "/v1/me/password/reset", 401, _err("unauthorized"), JSON).ok
    # 5xx and wrong success codes are failures
    assert not checker.check("GET", "/v1/me", 500, _err("internal_error"), JSON).ok
    assert not checker.check("POST", "/v1/teams", 200, b"{}", JSON).ok
    # 204 must be empty; 3xx needs a Location
    assert not checker.check("PATCH", "/v1/me", 204, b"{}", {}).ok
    assert not checker.check("GET", "/auth/oauth/github/callback", 302, b"", {}).ok
    assert checker.check("GET", "/auth/oauth/github/callback", 302, b"", {"location": "http://x/"}).ok
    # unknown method on a known path must be 405; unknown path is a failure
    assert checker.check("PUT", "/v1/me", 405, _err("method_not_allowed"), JSON).ok
    assert not checker.check("PUT", "/v1/me", 404, _err("not_found"), JSON).ok
    assert not checker.check("GET", "/v1/nothing-here", 404, _err("not_found"), JSON).ok


def test_error_envelope_is_enforced(checker: Checker) -> None:
    for body in (_json({"detail": "x"}), _json({"error": {"code": "x"}}), _json({"error": "x"}), b"oops",
                 _json({"error": {"code": "x", "message": 3}})):
        assert not checker.check("POST", "/v1/teams", 400, body, JSON).ok, body
    assert not checker.check("POST", "/v1/teams", 400, _err(), {"content-type": "text/plain"}).ok


def test_deviation_table_is_small_and_explained() -> None:
    assert len(UNDOCUMENTED_STATUSES) <= 10
    for deviation in UNDOCUMENTED_STATUSES:
        assert deviation.reason and deviation.scope and 400 <= deviation.status < 500


async def test_recorder_raises_and_records() -> None:
    import httpx
    from starlette.responses import JSONResponse, Response

    async def handler(request: Any) -> Response:
        if request.url.path == "/v1/me":
            return JSONResponse({"name": "n", "email": "a@b.c", "has_password": True, "providers": []})
        return JSONResponse({"detail": "nope"}, status_code=400)

    app = FastAPI()
    app.add_route("/v1/me", handler, methods=["GET"])
    app.add_route("/v1/teams", handler, methods=["POST"])
    recorder = ConformanceRecorder()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=recorder.asgi(app)),
                                 base_url="http://t") as client:
        assert (await client.get("/v1/me")).status_code == 200
        with pytest.raises(ConformanceError, match="envelope"):
            await client.post("/v1/teams", json={})
    assert recorder.seen["getMe"][200] == 1 and len(recorder.failures) == 1

    hooked = ConformanceRecorder(raise_on_failure=False)
    async with hooked.wrap(httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")) as c:
        await c.get("/v1/me")
        await c.post("/v1/teams", json={})
    assert len(hooked.checked) == 2 and len(hooked.failures) == 1
    with pytest.raises(ConformanceError):
        hooked.assert_ok()
    hooked.assert_covered(["getMe"], success=True)
    with pytest.raises(ConformanceError):
        hooked.assert_covered(["createTeam"], success=True)
