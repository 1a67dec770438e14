"""A local OAuth server speaking GitHub's protocol (authorize redirect, token exchange, user + emails API).

GitHub is outside our system, so tests may replace it — with a real HTTP server on loopback, never a
patched function.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route


@dataclass
class GitHubUser:
    id: int
    login: str
    name: str
    email: str
    public_email: bool = False


@dataclass
class FakeGitHub:
    client_id: str = "test-client-id"
    client_secret: str = "test-client-secret"
    user: GitHubUser = field(default_factory=lambda: GitHubUser(4242, "octocat", "Octo Cat", "octo@example.com"))
    deny: bool = False
    codes: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, GitHubUser] = field(default_factory=dict)
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/login/oauth/authorize", self.authorize),
            Route("/login/oauth/access_token", self.access_token, methods=["POST"]),
            Route("/user", self.profile),
            Route("/user/emails", self.emails),
        ])

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != self.client_id or q.get("scope") != "user:email":
            return JSONResponse({"error": "bad_request"}, status_code=400)
        if self.deny:
            params = {"error": "access_denied", "state": q.get("state", "")}
        else:
            code = secrets.token_hex(10)
            self.codes[code] = q["redirect_uri"]
            params = {"code": code, "state": q.get("state", "")}
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode(params)}", status_code=302)

    async def access_token(self, request: Request) -> Response:
        form = await request.form()
        code = str(form.get("code", ""))
        ok = (form.get("client_id") == self.client_id and form.get("client_secret") == self.client_secret
              and self.codes.pop(code, None) == form.get("redirect_uri"))
        if not ok:
            return JSONResponse({"error": "bad_verification_code"})
        token = "gho_" + secrets.token_hex(16)
        self.tokens[token] = self.user
        return JSONResponse({"access_token": token, "token_type": "bearer", "scope": "user:email"})

    def _user_for(self, request: Request) -> GitHubUser | None:
        auth = request.headers.get("authorization", "")
        return self.tokens.get(auth.removeprefix("Bearer ").strip())

    async def profile(self, request: Request) -> Response:
        user = self._user_for(request)
        if user is None:
            return JSONResponse({"message": "Bad credentials"}, status_code=401)
        body: dict[str, Any] = {"id": user.id, "login": user.login, "name": user.name,
                                "email": user.email if user.public_email else None}
        return JSONResponse(body)

    async def emails(self, request: Request) -> Response:
        user = self._user_for(request)
        if user is None:
            return JSONResponse({"message": "Bad credentials"}, status_code=401)
        return JSONResponse([
            {"email": "noreply@users.github.test", "primary": False, "verified": True},
            {"email": user.email, "primary": True, "verified": True},
        ])


class ServerThread:
    """Run an ASGI app with uvicorn on a free loopback port in a background thread."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("fake server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
