"""A minimal Matrix homeserver (client-server API v3) for the Apprise Matrix path: whoami, join, send.

Matrix is outside our system, so tests replace it with a real HTTP server on loopback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class FakeMatrix:
    token: str = "syt_test_token"
    room_id: str = "!ops:example.org"
    messages: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/_matrix/client/v3/{path:path}", self.handle, methods=["GET", "POST", "PUT"])])

    async def handle(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"errcode": "M_UNKNOWN_TOKEN", "error": "bad token"}, status_code=401)
        path = request.path_params["path"]
        if path == "account/whoami":
            return JSONResponse({"user_id": "@wrenn:example.org"})
        if path == f"join/{self.room_id}":
            return JSONResponse({"room_id": self.room_id})
        if path.startswith(f"rooms/{self.room_id}/send/m.room.message/"):
            self.messages.append(orjson.loads(await request.body()))
            return JSONResponse({"event_id": f"$e{len(self.messages)}"})
        return JSONResponse({"errcode": "M_FORBIDDEN", "error": "not in room"}, status_code=403)
