"""The agent's HTTP calls to the control plane (hostagent-wire.md §9.2-§9.5).

Plain JSON over HTTP(S); errors from the CP use ``{"error":{"code","message"}}`` and only the message
is logged. Network failures surface as ``httpx.TransportError`` so callers can count them.
"""

from __future__ import annotations

from typing import Any

import httpx

REGISTER_TIMEOUT = 30.0
REFRESH_TIMEOUT = 15.0
HEARTBEAT_TIMEOUT = 10.0
EVENT_TIMEOUT = 10.0


class CPRejected(Exception):
    """The CP answered with a status other than the one the call expects."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def error_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200] or resp.reason_phrase
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    return resp.text[:200]


class CPClient:
    """One keep-alive HTTP client for every call the agent makes to the CP."""

    def __init__(self, cp_url: str) -> None:
        self.base = cp_url.rstrip("/")
        self.http = httpx.AsyncClient(headers={"User-Agent": "wrenn-agent (python)"}, follow_redirects=False)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _json(self, path: str, body: dict[str, Any], expect: int, limit_s: float) -> dict[str, Any]:
        resp = await self.http.post(self.base + path, json=body, timeout=limit_s)
        if resp.status_code != expect:
            raise CPRejected(resp.status_code, error_message(resp))
        try:
            data = resp.json()
        except ValueError as exc:
            raise CPRejected(resp.status_code, f"answer is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise CPRejected(resp.status_code, "answer is not a JSON object")
        return data

    async def register(self, token: str, facts: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/hosts/register``; exactly 201 or ``CPRejected``."""
        return await self._json("/v1/hosts/register", {"token": token, **facts}, 201, REGISTER_TIMEOUT)

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        """``POST /v1/hosts/auth/refresh``; exactly 200 or ``CPRejected``."""
        return await self._json("/v1/hosts/auth/refresh", {"refresh_token": refresh_token}, 200, REFRESH_TIMEOUT)

    async def heartbeat(self, host_id: str, jwt: str) -> httpx.Response:
        """``POST /v1/hosts/{id}/heartbeat`` with no body; the caller reacts to the status."""
        return await self.http.post(
            f"{self.base}/v1/hosts/{host_id}/heartbeat", headers={"X-Host-Token": jwt}, timeout=HEARTBEAT_TIMEOUT
        )

    async def sandbox_event(self, jwt: str, body: dict[str, Any]) -> httpx.Response:
        """``POST /v1/hosts/sandbox-events``; 204 expected."""
        return await self.http.post(
            self.base + "/v1/hosts/sandbox-events", json=body, headers={"X-Host-Token": jwt}, timeout=EVENT_TIMEOUT
        )
