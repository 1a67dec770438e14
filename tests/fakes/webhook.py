"""A local webhook receiver that does what a careful integrator would: verify every signature, check the
timestamp, and drop redeliveries by ``X-Wrenn-Delivery`` (its idempotency check). It can be told to fail
the next N requests, and it also accepts Slack-/Discord-style chat webhooks on ``/chat``.

Thread-safe: it runs in a ``ServerThread`` while tests read it from their own loop."""

from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Delivery:
    delivery_id: str
    event_id: str
    event: dict[str, Any]
    headers: dict[str, str]


@dataclass
class WebhookReceiver:
    secret: str = ""
    fail_next: int = 0
    fail_status: int = 500
    accepted: list[Delivery] = field(default_factory=list)  # first time each delivery ID was seen
    duplicates: list[Delivery] = field(default_factory=list)  # redeliveries the idempotency check dropped
    attempts: int = 0
    bad_signatures: int = 0
    chat: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.hook, methods=["POST"]),
                                 Route("/chat", self.chat_hook, methods=["POST"])])

    def expected_signature(self, timestamp: str, body: bytes) -> str:
        return "sha256=" + hmac.new(self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self.attempts += 1
            if self.fail_next > 0:
                self.fail_next -= 1
                return Response("try later", status_code=self.fail_status)
            timestamp = request.headers.get("x-wrenn-timestamp", "")
            given = request.headers.get("x-wrenn-signature", "")
            sent_at = datetime.fromisoformat(timestamp) if timestamp else None
            fresh = sent_at is not None and abs((datetime.now(UTC) - sent_at).total_seconds()) < 300
            if not fresh or not hmac.compare_digest(given, self.expected_signature(timestamp, body)):
                self.bad_signatures += 1
                return Response("bad signature", status_code=401)
            delivery = Delivery(request.headers["x-wrenn-delivery"], request.headers.get("x-wrenn-event-id", ""),
                                orjson.loads(body), dict(request.headers))
            if any(d.delivery_id == delivery.delivery_id for d in self.accepted):
                self.duplicates.append(delivery)
            else:
                self.accepted.append(delivery)
        return Response(status_code=204)

    async def chat_hook(self, request: Request) -> Response:
        with self._lock:
            self.attempts += 1
            self.chat.append(orjson.loads(await request.body()))
        return JSONResponse({"ok": True})

    def snapshot(self) -> tuple[list[Delivery], list[Delivery], int]:
        with self._lock:
            return list(self.accepted), list(self.duplicates), self.attempts
