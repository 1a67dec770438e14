"""The Wrenn API 0.2.0 spec as data: its operations, and concrete URL → path-template matching."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SPEC_PATH = Path(__file__).resolve().parent / "wrenn-openapi-0.2.0.yaml"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_PARAM = re.compile(r"\{[^}]*\}")


def normalize_path(path: str) -> str:
    """Path template with parameter names erased: ``/v1/teams/{team_id}`` → ``/v1/teams/{}``.

    Also drops a trailing slash and Starlette converters (``{p:path}``).
    """
    if len(path) > 1:
        path = path.rstrip("/")
    return _PARAM.sub("{}", path)


@dataclass(frozen=True)
class Operation:
    method: str  # upper case
    path: str  # the spec's template, e.g. /v1/teams/{id}
    operation_id: str
    tags: tuple[str, ...]
    security: tuple[str, ...]  # scheme names, alternatives; empty = public
    responses: dict[str, Any] = field(hash=False, compare=False)
    has_body: bool = False
    path_params: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return self.method, normalize_path(self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.operation_id})"


@dataclass
class _Template:
    path: str
    regex: re.Pattern[str]
    literal_segments: int


class Spec:
    """An OpenAPI document with an index of its operations."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.operations: list[Operation] = []
        self._by_key: dict[tuple[str, str], Operation] = {}
        self._by_id: dict[str, Operation] = {}
        self._templates: list[_Template] = []
        root_security = _scheme_names(document.get("security") or [])
        for path, item in (document.get("paths") or {}).items():
            shared_params = item.get("parameters") or []
            for method, op in item.items():
                if method not in HTTP_METHODS:
                    continue
                params = [*shared_params, *(op.get("parameters") or [])]
                security = _scheme_names(op["security"]) if "security" in op else root_security
                operation = Operation(
                    method=method.upper(),
                    path=path,
                    operation_id=op.get("operationId") or f"{method.upper()} {path}",
                    tags=tuple(op.get("tags") or ()),
                    security=security,
                    responses=op.get("responses") or {},
                    has_body="requestBody" in op,
                    path_params=tuple(p["name"] for p in params if p.get("in") == "path"),
                )
                self.operations.append(operation)
                self._by_key[operation.key] = operation
                self._by_id[operation.operation_id] = operation
            segments = path.strip("/").split("/")
            pattern = "/".join("[^/]+" if _PARAM.fullmatch(s) else re.escape(s) for s in segments)
            self._templates.append(
                _Template(path, re.compile(f"^/{pattern}/?$"), sum(1 for s in segments if not _PARAM.fullmatch(s)))
            )
        # Most literal template first: /v1/capsules/stats beats /v1/capsules/{id}.
        self._templates.sort(key=lambda t: (-t.literal_segments, t.path))

    def __len__(self) -> int:
        return len(self.operations)

    def by_id(self, operation_id: str) -> Operation:
        return self._by_id[operation_id]

    def find(self, method: str, template: str) -> Operation | None:
        """The operation for a method and a path template (parameter names don't matter)."""
        return self._by_key.get((method.upper(), normalize_path(template)))

    def match_path(self, url_path: str) -> list[str]:
        """Spec path templates a concrete path matches, most specific first."""
        return [t.path for t in self._templates if t.regex.match(url_path)]

    def match(self, method: str, url_path: str) -> Operation | None:
        """The operation serving a concrete request, preferring literal segments over parameters."""
        for template in self.match_path(url_path):
            op = self.find(method, template)
            if op is not None:
                return op
        return None

    def resolve(self, node: Any) -> Any:
        """Follow local ``$ref``s (``#/components/...``) until a non-reference node."""
        seen = 0
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/"):
                raise ValueError(f"only local $refs are supported, got {ref!r}")
            node = self.pointer(ref[1:])
            seen += 1
            if seen > 32:
                raise ValueError(f"$ref loop at {ref}")
        return node

    def pointer(self, pointer: str) -> Any:
        node: Any = self.document
        for raw in pointer.lstrip("/").split("/"):
            part = raw.replace("~1", "/").replace("~0", "~")
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node


def _scheme_names(requirements: list[dict[str, Any]]) -> tuple[str, ...]:
    names: list[str] = []
    for requirement in requirements:
        names.extend(requirement)
    return tuple(names)


@functools.cache
def load_spec(path: str | Path = SPEC_PATH) -> Spec:
    with open(path, encoding="utf-8") as fh:
        return Spec(yaml.safe_load(fh))
