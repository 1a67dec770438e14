"""A small SSE client for tests: reads a real HTTP stream and hands over parsed frames.

Parses strictly: LF line endings only, ``id:``/``event:``/``data:`` fields, ``:`` comments (kept, so tests
can see keepalives and the closing comment)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from fastapi import FastAPI

from app.core.config import Settings
from app.main import create_app
from tests.fakes.github import ServerThread


@dataclass
class Frame:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    comment: str | None = None

    def json(self) -> Any:
        assert self.data is not None
        return orjson.loads(self.data)


@dataclass
class SSEStream:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    cookies: httpx.Cookies | None = None
    frames: asyncio.Queue[Frame | None] = field(default_factory=asyncio.Queue)
    status: int = 0
    response_headers: httpx.Headers | None = None
    raw: bytearray = field(default_factory=bytearray)
    ended: bool = False
    _task: asyncio.Task[None] | None = None
    _opened: asyncio.Event = field(default_factory=asyncio.Event)
    body: bytes = b""

    async def __aenter__(self) -> SSEStream:
        self._task = asyncio.create_task(self._read())
        await asyncio.wait_for(self._opened.wait(), 15)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _read(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None), cookies=self.cookies) as client, \
                    client.stream("GET", self.url, headers=self.headers) as response:
                self.status, self.response_headers = response.status_code, response.headers
                if response.status_code != 200:
                    self.body = await response.aread()
                    self._opened.set()
                    return
                self._opened.set()
                pending = Frame()
                buffer = b""
                async for chunk in response.aiter_raw():
                    self.raw += chunk
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        assert not line.endswith(b"\r"), "SSE lines must end with LF"
                        text = line.decode()
                        if text.startswith(":"):
                            self.frames.put_nowait(Frame(comment=text[1:].strip()))
                        elif text == "":
                            if pending.data is not None or pending.event is not None:
                                self.frames.put_nowait(pending)
                            pending = Frame()
                        else:
                            key, _, value = text.partition(":")
                            value = value[1:] if value.startswith(" ") else value
                            if key == "data":
                                pending.data = value if pending.data is None else pending.data + "\n" + value
                            elif key in ("id", "event"):
                                setattr(pending, key, value)
        finally:
            self.ended = True
            self._opened.set()
            self.frames.put_nowait(None)

    async def next(self, wait: float = 15, *, comments: bool = False) -> Frame:
        """The next event (comments skipped unless asked for). Fails if the stream ends first."""
        while True:
            frame = await asyncio.wait_for(self.frames.get(), wait)
            if frame is None:
                raise AssertionError("stream ended")
            if frame.comment is None or comments:
                return frame

    async def events(self, count: int, wait: float = 15) -> list[Frame]:
        return [await self.next(wait) for _ in range(count)]

    async def until(self, predicate: Callable[[Frame], bool], wait: float = 15) -> Frame:
        while True:
            frame = await self.next(wait)
            if predicate(frame):
                return frame

    async def quiet(self, seconds: float) -> list[Frame]:
        """Events received within ``seconds`` (expected: none)."""
        got: list[Frame] = []
        deadline = asyncio.get_running_loop().time() + seconds
        with contextlib.suppress(TimeoutError):
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                frame = await asyncio.wait_for(self.frames.get(), left)
                if frame is None:
                    break
                if frame.comment is None:
                    got.append(frame)
        return got


class LiveApp:
    """The control-plane app served by uvicorn on a loopback port (streams need a real server)."""

    def __init__(self, settings: Settings) -> None:
        self.app: FastAPI = create_app(settings)
        self.server = ServerThread(self.app)
        self.server.server.config.timeout_graceful_shutdown = 5
        self.base = f"http://127.0.0.1:{self.server.port}"

    def __enter__(self) -> LiveApp:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__()

    def hub_subscribers(self) -> int:
        return len(self.app.state.wrenn.extras["event_hub"].subscribers)
