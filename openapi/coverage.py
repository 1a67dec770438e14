"""Which spec operations the app routes: ``python -m openapi.coverage``.

Compares (method, path template) of every route the app serves with the spec's operations, with path
parameter names normalised (``/v1/teams/{team_id}`` ≡ ``/v1/teams/{id}``). Needs no database: the app is
built with dummy URLs and its lifespan never runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.routing import Mount, WebSocketRoute

from openapi.spec import Operation, Spec, load_spec, normalize_path

# App routes that are not API operations (docs, health, the spec itself).
IGNORED_PATHS = frozenset({"/health", "/openapi.yaml", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


@dataclass(frozen=True, order=True)
class AppRoute:
    method: str
    path: str

    @property
    def key(self) -> tuple[str, str]:
        return self.method, normalize_path(self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass
class Coverage:
    implemented: list[Operation]
    missing: list[Operation]
    extra: list[AppRoute]
    total: int

    def __iter__(self) -> Iterator[Any]:  # (implemented, missing, extra) = coverage(...)
        return iter((self.implemented, self.missing, self.extra))


def iter_app_routes(app: Any) -> Iterator[AppRoute]:
    """Every (method, full path) an ASGI app built on Starlette/FastAPI routes.

    FastAPI ≥ 0.16x keeps ``include_router`` results as lazy ``_IncludedRouter`` entries in ``app.routes``
    (no ``path``); ``fastapi.routing.iter_route_contexts`` flattens them with their prefixes. Older FastAPI
    copies routes into ``app.routes`` directly. Mounts are walked with their prefix; WebSocket routes count
    as GET (the spec documents upgrades as ``GET`` with a 101 response).
    """
    yield from _walk(list(getattr(app, "routes", ()) or ()), "")


def _flatten(routes: Sequence[Any]) -> Iterable[Any]:
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: included routes are already flat
        return routes
    return iter_route_contexts(routes)


def _walk(routes: Sequence[Any], prefix: str) -> Iterator[AppRoute]:
    for route in _flatten(routes):
        path = getattr(route, "path", None)
        if path is None:
            # A lazily included router this FastAPI's iter_route_contexts did not flatten: walk it by hand.
            router = getattr(route, "original_router", None)
            context = getattr(route, "include_context", None)
            if router is not None:
                yield from _walk(list(router.routes), prefix + getattr(context, "prefix", ""))
            continue
        original = getattr(route, "original_route", route)  # fastapi RouteContext wraps the real route
        methods = getattr(route, "methods", None)
        if isinstance(original, Mount) or (methods is None and isinstance(getattr(original, "routes", None), list)):
            yield from _walk(list(original.routes), prefix + path.rstrip("/"))
            continue
        full = prefix + path
        if methods is None:
            is_ws = isinstance(original, WebSocketRoute) or "websocket" in type(original).__name__.lower()
            methods = {"GET"} if is_ws else set()
        for method in sorted(methods):
            if method in ("HEAD", "OPTIONS") and "GET" in methods:
                continue
            yield AppRoute(method, full)


def dummy_settings(data_dir: Path | None = None) -> Any:
    """Settings good enough to build (not run) the app: nothing is connected to."""
    from app.core.config import Settings

    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="wrenn-coverage-"))
    values: dict[str, Any] = {
        "WRENN_ENV": "development",
        "WRENN_DIR": data_dir,
        "DATABASE_URL": "postgresql+asyncpg://coverage:coverage@127.0.0.1:1/coverage",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "JWT_SECRET": "coverage-" + "x" * 40,
        "WRENN_ENCRYPTION_KEY": "ab" * 32,
        "OAUTH_REDIRECT_URL": "http://frontend.invalid",
    }
    return Settings(**values)


def build_app(data_dir: Path | None = None) -> Any:
    """The app as ``create_app`` builds it, with dummy settings; its lifespan is never run."""
    from app.main import create_app

    return create_app(dummy_settings(data_dir))


def coverage(app: Any | None = None, spec: Spec | None = None) -> Coverage:
    """Compare the app's routes with the spec. Returns (implemented, missing, extra), unpackable."""
    spec = spec or load_spec()
    if app is None:
        with tempfile.TemporaryDirectory(prefix="wrenn-coverage-") as tmp:
            app_routes = list(iter_app_routes(build_app(Path(tmp))))
    else:
        app_routes = list(iter_app_routes(app))
    routes: dict[tuple[str, str], AppRoute] = {}
    for route in app_routes:
        if normalize_path(route.path) in IGNORED_PATHS:
            continue
        routes.setdefault(route.key, route)
    implemented = [op for op in spec.operations if op.key in routes]
    missing = [op for op in spec.operations if op.key not in routes]
    spec_keys = {op.key for op in spec.operations}
    extra = sorted(r for key, r in routes.items() if key not in spec_keys)
    return Coverage(implemented, missing, extra, len(spec))


def implemented_ids(app: Any | None = None) -> set[str]:
    return {op.operation_id for op in coverage(app).implemented}


def report(result: Coverage, *, by_tag: bool = False) -> str:
    lines = [f"implemented {len(result.implemented)}/{result.total} operations"]
    if result.missing:
        lines.append(f"missing ({len(result.missing)}):")
        for op in result.missing:
            tag = f" [{', '.join(op.tags)}]" if by_tag else ""
            lines.append(f"  {op.method:<6} {op.path}  {op.operation_id}{tag}")
    if result.extra:
        lines.append(f"extra app routes not in the spec ({len(result.extra)}):")
        for route in result.extra:
            lines.append(f"  {route.method:<6} {route.path}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openapi.coverage", description=__doc__)
    parser.add_argument("--tags", action="store_true", help="show each missing operation's tags")
    args = parser.parse_args(argv)
    print(report(coverage(), by_tag=args.tags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
