"""Test helpers that drive the API the way the SPA does: cookies, CSRF header, outbox links."""

from __future__ import annotations

import itertools
import re
from typing import Any

import httpx
from fastapi import FastAPI

from app.core.config import Settings
from app.core.mail import read_outbox

PASSWORD = "correct horse battery"
_seq = itertools.count(1)


class Client:
    """An httpx client with its own cookie jar that sends X-CSRF-Token like the SPA does."""

    def __init__(self, app: FastAPI | str, *, csrf: bool = True, headers: dict[str, str] | None = None,
                 timeout: float = 60) -> None:
        """``app``: an in-process app (ASGI transport) or the base URL of a live server."""
        self.csrf = csrf
        if isinstance(app, str):
            self.http = httpx.AsyncClient(base_url=app, headers=headers, timeout=timeout)
        else:
            self.http = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=(f"10.0.0.{next(_seq) % 250 + 1}", 1234)),
                base_url="http://testserver",
                headers=headers,
                timeout=timeout,
            )
        self.user_id = ""
        self.team_id = ""
        self.email = ""

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        token = self.http.cookies.get("wrenn_csrf")
        if self.csrf and method.upper() not in ("GET", "HEAD") and token and "X-CSRF-Token" not in headers:
            headers["X-CSRF-Token"] = token
        return await self.http.request(method, url, headers=headers, **kwargs)

    async def get(self, url: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", url, **kw)

    async def post(self, url: str, **kw: Any) -> httpx.Response:
        return await self.request("POST", url, **kw)

    async def put(self, url: str, **kw: Any) -> httpx.Response:
        return await self.request("PUT", url, **kw)

    async def patch(self, url: str, **kw: Any) -> httpx.Response:
        return await self.request("PATCH", url, **kw)

    async def delete(self, url: str, **kw: Any) -> httpx.Response:
        return await self.request("DELETE", url, **kw)


class Platform:
    def __init__(self, app: FastAPI | str, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.clients: list[Client] = []

    def client(self, **kw: Any) -> Client:
        c = Client(self.app, **kw)
        self.clients.append(c)
        return c

    async def close(self) -> None:
        for c in self.clients:
            await c.http.aclose()

    def outbox(self) -> list[dict[str, str]]:
        return read_outbox(self.settings.outbox_dir)

    def last_link(self, to: str, path: str) -> str:
        for message in reversed(self.outbox()):
            if message["to"] == to:
                match = re.search(rf"{re.escape(path)}\?token=([0-9a-f]+)", message["body"])
                if match:
                    return match.group(1)
        raise AssertionError(f"no {path} link mailed to {to}")

    async def user(self, name: str | None = None, email: str | None = None) -> Client:
        """Sign up, activate from the outbox link and return a logged-in client."""
        n = next(_seq)
        email = email or f"user{n}@example.com"
        c = self.client()
        r = await c.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": name or f"User {n}"})
        assert r.status_code == 201, r.text
        token = self.last_link(email, "/activate")
        r = await c.post("/v1/auth/activate", json={"token": token})
        assert r.status_code == 200, r.text
        body = r.json()
        c.user_id, c.team_id, c.email = body["user_id"], body["team_id"], email
        return c

    async def login(self, email: str, password: str = PASSWORD) -> Client:
        c = self.client()
        r = await c.post("/v1/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        body = r.json()
        c.user_id, c.team_id, c.email = body["user_id"], body["team_id"], email
        return c
