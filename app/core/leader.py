"""Leader-elected background loops: every replica runs each loop, only the holder of its Postgres
advisory lock acts. The lock lives on a dedicated connection, so a dead replica's leadership ends
with its connection and another replica takes over on its next tick."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("wrenn.leader")

Job = Callable[[], Awaitable[None]]


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a loop name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class LeaderLoop:
    def __init__(self, engine: AsyncEngine, name: str, interval: float, job: Job, run_at_start: bool = True) -> None:
        self.engine = engine
        self.name = name
        self.interval = interval
        self.job = job
        self.run_at_start = run_at_start
        self._conn: AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self.is_leader = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"leader:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._release()

    async def _loop(self) -> None:
        first = True
        while True:
            if not first or self.run_at_start:
                await self.tick()
            first = False
            await asyncio.sleep(self.interval)

    async def tick(self) -> bool:
        """Run the job once if this process is (or becomes) the leader; returns whether it ran."""
        try:
            if not await self._hold():
                return False
            await self.job()
            return True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background loop %s failed", self.name)
            await self._release()  # a broken connection must not pin a stale leadership
            return False

    async def _hold(self) -> bool:
        if self._conn is not None and not self._conn.closed:
            # Still ours as long as the session lives; a cheap query detects a dead connection.
            await self._conn.execute(text("SELECT 1"))
            return True
        conn = await self.engine.connect()
        got = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key(self.name)})).scalar()
        await conn.commit()
        if not got:
            await conn.close()
            self.is_leader = False
            return False
        self._conn, self.is_leader = conn, True
        log.info("became leader of %s", self.name)
        return True

    async def _release(self) -> None:
        conn, self._conn, self.is_leader = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(self.name)})
                await conn.commit()
            with contextlib.suppress(Exception):
                await conn.close()
