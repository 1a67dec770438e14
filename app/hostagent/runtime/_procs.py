"""Processes the agent started inside a capsule (background and PTY): output buffer + live followers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from app.hostagent.runtime.base import ExecEvent, PtyEvent

E = TypeVar("E", ExecEvent, PtyEvent)
REPLAY_BYTES = 1 << 20  # output kept for connect_process / PTY reattach


@dataclass
class TrackedProc(Generic[E]):
    pid: int  # pid inside the capsule's pid namespace (what users see in `ps`)
    tag: str
    cmd: str
    args: list[str]
    kind: str  # "background" | "pty"
    wrapper: asyncio.subprocess.Process  # nsenter (host side); its only child is the capsule process
    events: deque[E] = field(default_factory=deque)
    buffered: int = 0
    followers: set[asyncio.Queue[E | None]] = field(default_factory=set)
    done: bool = False
    master_fd: int = -1  # PTY master, -1 for background processes
    pump: asyncio.Task[None] | None = None

    start: E | None = None

    def publish(self, ev: E, final: bool = False) -> None:
        if _is_start(ev):
            self.start = ev
        else:
            self.events.append(ev)
            self.buffered += len(ev.data)
            while self.buffered > REPLAY_BYTES and len(self.events) > 1:
                self.buffered -= len(self.events.popleft().data)
        for q in self.followers:
            q.put_nowait(ev)
            if final:
                q.put_nowait(None)
        if final:
            self.done = True

    async def follow(self, replay: bool, with_start: bool) -> AsyncGenerator[E, None]:
        """Buffered events (when ``replay``) then live ones until the process ends."""
        q: asyncio.Queue[E | None] = asyncio.Queue()
        if with_start and self.start is not None:
            q.put_nowait(self.start)
        if replay:
            for ev in list(self.events):
                q.put_nowait(ev)
        if self.done:
            q.put_nowait(None)
        else:
            self.followers.add(q)
        try:
            while True:
                item = await q.get()
                if item is None:
                    break
                yield item
        finally:
            self.followers.discard(q)

    def host_pid(self) -> int:
        """Host pid of the capsule process: the single child of the nsenter wrapper."""
        try:
            with open(f"/proc/{self.wrapper.pid}/task/{self.wrapper.pid}/children") as f:
                kids = f.read().split()
            return int(kids[0]) if kids else 0
        except (OSError, ValueError):
            return 0

    def signal(self, sig: int) -> None:
        hp = self.host_pid()
        # the capsule process is a session/group leader (setsid), so the whole job gets the signal
        if hp:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(hp, sig)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(hp, sig)
        elif sig == signal.SIGKILL and self.wrapper.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.wrapper.kill()


def _is_start(ev: ExecEvent | PtyEvent) -> bool:
    return ev.kind in ("start", "started")
