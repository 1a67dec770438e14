"""Per-capsule port proxy: which requests it takes, who may use it, and where they go.

control-plane.md §12, sdk-wire.md §12. A request whose ``Host`` (port stripped) is
``{port}-{capsule_id}.{domain}`` is proxied; ``domain`` must equal ``WRENN_PROXY_DOMAIN`` (port stripped)
when that is set, and may be anything otherwise (``127.0.0.1``, ``localhost``, the listen host…).

Authentication (a deliberate departure from the reference, which checks nothing): with
``WRENN_PROXY_REQUIRE_AUTH=true`` (the default) a request must carry ``X-API-Key`` or a session cookie of
the capsule's team. The SDK always sends its key (code runner, Jupyter socket), so it is unaffected;
a bare browser visit to ``get_url()`` gets 401 unless the operator turns the setting off, in which case
the capsule ID is the only secret, as in the reference. A credential that *is* sent is always checked:
invalid → 401, another team's capsule → 404. Credentials never reach the capsule.

Routes (capsule → agent address) are cached for 120 s and dropped when the agent reports a failure.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from starlette.requests import HTTPConnection

from app.apikeys import service as apikeys
from app.auth import sessions
from app.auth.identity import Identity
from app.capsules import service as capsules
from app.capsules.models import Capsule
from app.core import ids
from app.core.errors import HostUnavailable, InvalidRequest, InvalidState, NotFound, Unauthorized
from app.core.state import AppState
from app.hostagent.client import AgentClient
from app.hosts import agents
from app.hosts.models import Host

HOST_RE = re.compile(r"^(\d+)-(cl-[0-9a-z]+)\.(.+)$")
ROUTE_TTL = 120.0
TOUCH_EVERY = 30.0
WRENN_COOKIES = (sessions.SID_COOKIE, sessions.CSRF_COOKIE)


@dataclass(frozen=True)
class ProxyTarget:
    """What the ``Host`` header names: a port inside a capsule (validated lazily, see ``validate``)."""

    port_text: str
    ref: str

    def validate(self) -> tuple[int, uuid.UUID]:
        if len(self.port_text) > 5 or not 1 <= int(self.port_text) <= 65535:
            raise InvalidRequest(f"invalid port {self.port_text!r}: must be 1-65535")
        return int(self.port_text), ids.decode(ids.CAPSULE, self.ref, "capsule id")


def _strip_port(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("["):
        return host
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def match_host(host: str, proxy_domain: str) -> ProxyTarget | None:
    """The proxy target named by a ``Host`` header, or None for an ordinary API request."""
    match = HOST_RE.match(_strip_port(host))
    if match is None:
        return None
    if proxy_domain and match.group(3) != _strip_port(proxy_domain):
        return None
    return ProxyTarget(match.group(1), match.group(2))


# --- authentication --------------------------------------------------------------------------------


async def caller(state: AppState, conn: HTTPConnection) -> Identity | None:
    """The key's or session's identity; None without credentials; 401 for bad ones (or none when required)."""
    raw_key = conn.headers.get("x-api-key")
    if raw_key is not None:
        who = await apikeys.authenticate(state, raw_key.strip())
        if who is None:
            raise Unauthorized("invalid API key")
        return who
    raw_sid = conn.cookies.get(sessions.SID_COOKIE)
    if raw_sid:
        who = await sessions.load_session(state, raw_sid, conn)
        if who is None:
            raise Unauthorized("session expired or revoked")
        return who
    if state.settings.proxy_require_auth:
        raise Unauthorized("authentication required: send X-API-Key")
    return None


# --- routes ------------------------------------------------------------------------------------------


@dataclass
class Route:
    capsule_id: uuid.UUID
    team_id: uuid.UUID
    host_id: uuid.UUID
    address: str
    expires: float
    touched: float = 0.0


def _cache(state: AppState) -> dict[uuid.UUID, Route]:
    cache: dict[uuid.UUID, Route] = state.extras.setdefault("proxy_routes", {})
    return cache


def drop_route(state: AppState, capsule_id: uuid.UUID) -> None:
    _cache(state).pop(capsule_id, None)


async def route(state: AppState, capsule_id: uuid.UUID, ref: str, *, fresh: bool = False) -> Route:
    """The capsule's agent (cached 120 s): unknown → 404, not running → 409, host without address → 503."""
    now = time.monotonic()
    cached = _cache(state).get(capsule_id)
    if cached is not None and cached.expires > now and not fresh:
        return cached
    async with state.db() as db:
        capsule = await db.scalar(select(Capsule).where(Capsule.id == capsule_id))
        if capsule is None:
            raise NotFound(f"capsule {ref} not found")
        if capsule.status != "running":
            drop_route(state, capsule_id)
            raise InvalidState(f"capsule is not running (status: {capsule.status})")
        host = await db.get(Host, capsule.host_id) if capsule.host_id else None
    if host is None or not host.address:
        raise HostUnavailable("the capsule's host is not available")
    found = Route(capsule_id, capsule.team_id, host.id, host.address, now + ROUTE_TTL)
    _cache(state)[capsule_id] = found
    return found


def authorize(who: Identity | None, found: Route, ref: str) -> None:
    """A credential of another team sees no capsule (404, like the API)."""
    if who is not None and who.team_id != found.team_id:
        raise NotFound(f"capsule {ref} not found")


def client_for(state: AppState, found: Route) -> AgentClient:
    return agents.client_for(state, found.host_id, found.address)


def note_activity(state: AppState, found: Route) -> None:
    """Proxied traffic counts as capsule activity (recorded at most every 30 s)."""
    now = time.monotonic()
    if now - found.touched >= TOUCH_EVERY:
        found.touched = now
        capsules.spawn(state, capsules.touch(state, found.capsule_id), f"proxy-touch:{found.capsule_id}")


# --- headers -----------------------------------------------------------------------------------------

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "host",
})
WS_HANDSHAKE = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol",
    "content-length",
})


def _strip_cookies(value: str) -> str:
    kept = [part.strip() for part in value.split(";")
            if part.strip() and part.split("=", 1)[0].strip() not in WRENN_COOKIES]
    return "; ".join(kept)


def forward_headers(raw: list[tuple[bytes, bytes]], *, websocket: bool = False) -> list[tuple[str, str]]:
    """Request headers for the capsule: no hop-by-hop ones, no X-API-Key, no wrenn cookies."""
    skip = HOP_BY_HOP | {"x-api-key"} | (WS_HANDSHAKE if websocket else frozenset())
    out: list[tuple[str, str]] = []
    for key, value in raw:
        name, text = key.decode("latin-1").lower(), value.decode("latin-1")
        if name in skip:
            continue
        if name == "cookie":
            text = _strip_cookies(text)
            if not text:
                continue
        out.append((name, text))
    return out
