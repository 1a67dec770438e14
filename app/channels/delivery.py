"""Channel delivery: at least once, through Redis consumer groups, one consumer per process.

Two stages, each a consumer group whose pending entries survive a crash or restart of any replica:

1. **Fan-out** — group ``wrenn-channels-v1`` on ``wrenn:events``. For each durable event, find the team's
   channels subscribed to it and, in one MULTI/EXEC, append one work entry per channel to
   ``wrenn:channel-deliveries`` and XACK the event. A crash before the EXEC leaves the event pending; it is
   reclaimed (XAUTOCLAIM) by any replica after ``FANOUT_RECLAIM_MS``.
2. **Send** — group ``wrenn-channel-senders-v1`` on ``wrenn:channel-deliveries``. A new entry is attempted
   at once. Success → XACK + XDEL. Failure → the entry stays pending (its idle clock reset), and the retry
   loop of any replica claims it again (XCLAIM with a minimum idle time, so exactly one replica wins) once
   it has been idle for the next delay of ``channel_retry_delays_sec``. Redis' delivery counter is the
   attempt number. After the last attempt the failure is recorded in the audit log (``channel`` /
   ``delivery_failed``, status error) and the entry dropped. While an attempt runs its entry is touched
   every few seconds so no other replica mistakes it for abandoned.

A receiver sees every event at least once; ``X-Wrenn-Delivery`` is stable per (event, channel), so it can
drop the rare duplicate (a crash between a successful POST and the XACK).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from typing import Any

import orjson
from redis.exceptions import RedisError, ResponseError
from sqlalchemy import select

from app.audit import service as audit
from app.channels import crypto
from app.channels.models import Channel
from app.channels.providers import DeliveryError, Target, deliver
from app.core import ids
from app.core.security import token_hex
from app.core.state import AppState
from app.events.service import CHANNEL_EVENTS, STREAM

log = logging.getLogger("wrenn.channels.delivery")

FANOUT_GROUP = "wrenn-channels-v1"
WORK_STREAM = "wrenn:channel-deliveries"
SEND_GROUP = "wrenn-channel-senders-v1"
BLOCK_MS = 2000
FANOUT_RECLAIM_MS = 30_000
MAX_IN_FLIGHT = 32
TOUCH_EVERY = 2.0
CONSUMER_GC_EVERY = 600.0
CONSUMER_GC_IDLE_MS = 3_600_000


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{token_hex(3)}"


def wanted(event: dict[str, Any], fields: dict[str, Any]) -> bool:
    """Durable, subscribable events — minus the redundant system follow-ups of capsule actions (§14.5):
    a system-actor ``capsule.*`` without a ``reason`` repeats what the accept-time event already said."""
    if fields.get("transient") or event.get("event") not in CHANNEL_EVENTS:
        return False
    system = (event.get("actor") or {}).get("type") == "system"
    return not (system and event["event"].startswith("capsule.") and not (event.get("metadata") or {}).get("reason"))


class Dispatcher:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.redis = state.redis
        self.consumer = consumer_name()
        s = state.settings
        self.delays_ms = [max(0, int(d * 1000)) for d in s.channel_retry_delays_sec]
        self.max_attempts = len(self.delays_ms) + 1
        self.tick = min(2.0, max(0.1, min(s.channel_retry_delays_sec or [2.0]) / 2))
        self.touch_every = max(0.05, min(TOUCH_EVERY, min(s.channel_retry_delays_sec or [TOUCH_EVERY]) / 3))
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        self.tasks: list[asyncio.Task[None]] = []

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._ensure_groups()
        self.tasks = [asyncio.create_task(self._guard(loop), name=f"channels:{loop.__name__}")
                      for loop in (self._fanout_loop, self._send_loop, self._retry_loop)]

    async def stop(self) -> None:
        for task in [*self.tasks, *self.in_flight.values()]:
            task.cancel()
        for task in [*self.tasks, *self.in_flight.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Entries this consumer still holds stay pending; other replicas (or our successor) reclaim them.

    async def _ensure_groups(self) -> None:
        for stream, group, start in ((STREAM, FANOUT_GROUP, "$"), (WORK_STREAM, SEND_GROUP, "0")):
            try:
                await self.redis.xgroup_create(stream, group, id=start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _guard(self, loop: Any) -> None:
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted (e.g. FLUSHDB): recreate the groups
                    with contextlib.suppress(RedisError):
                        await self._ensure_groups()
                else:
                    log.warning("channel %s: %s", loop.__name__, exc)
                await asyncio.sleep(1)
            except Exception:
                log.exception("channel %s failed; restarting", loop.__name__)
                await asyncio.sleep(1)

    # --- stage 1: fan-out ------------------------------------------------------------------------

    async def _fanout_loop(self) -> None:
        while True:
            reply: Any = await self.redis.xreadgroup(FANOUT_GROUP, self.consumer, {STREAM: ">"}, count=50,
                                                     block=BLOCK_MS)
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    await self.fan_out(entry_id, fields)

    async def fan_out(self, entry_id: str, fields: dict[str, Any] | None) -> None:
        event: dict[str, Any] = {}
        if fields:
            with contextlib.suppress(orjson.JSONDecodeError):
                event = orjson.loads(fields.get("payload", "{}"))
        channels: list[uuid.UUID] = []
        if isinstance(event, dict) and fields and wanted(event, fields):
            team_id = ids.try_decode(ids.TEAM, str(event.get("team_id", "")))
            if team_id is not None:
                async with self.state.db() as db:  # a DB error leaves the event pending: reclaimed later
                    channels = list(await db.scalars(select(Channel.id).where(
                        Channel.team_id == team_id, Channel.event_types.contains([event["event"]]))))
        async with self.redis.pipeline(transaction=True) as pipe:
            for channel_id in channels:
                pipe.xadd(WORK_STREAM, {"event_id": entry_id, "channel_id": str(channel_id),
                                        "payload": fields["payload"] if fields else "{}"})
            pipe.xack(STREAM, FANOUT_GROUP, entry_id)
            await pipe.execute()

    # --- stage 2: send -----------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            await self.slots.acquire()
            self.slots.release()
            count = max(1, min(10, MAX_IN_FLIGHT - len(self.in_flight)))
            reply: Any = await self.redis.xreadgroup(SEND_GROUP, self.consumer, {WORK_STREAM: ">"}, count=count,
                                                block=BLOCK_MS)
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    await self._spawn(entry_id, fields, attempt=1)

    async def _spawn(self, entry_id: str, fields: dict[str, Any], attempt: int) -> None:
        await self.slots.acquire()
        task = asyncio.create_task(self._attempt(entry_id, fields, attempt), name=f"channel-send:{entry_id}")
        self.in_flight[entry_id] = task

        def done(_: asyncio.Task[None]) -> None:
            self.in_flight.pop(entry_id, None)
            self.slots.release()

        task.add_done_callback(done)

    async def _attempt(self, entry_id: str, fields: dict[str, Any], attempt: int) -> None:
        event_id = str(fields.get("event_id", ""))
        event = orjson.loads(fields.get("payload", "{}"))
        target, team_id = await self._target(str(fields.get("channel_id", "")))
        if target is None:
            await self._finish(entry_id)  # channel deleted (or unreadable) since: nothing to deliver
            return
        if attempt > self.max_attempts:
            await self._give_up(entry_id, target, team_id, event, event_id, attempt - 1, "attempts exhausted")
            return
        toucher = asyncio.create_task(self._touch(entry_id))
        try:
            await deliver(target, event, event_id, timeout=self.state.settings.channel_timeout_sec,
                          allow_private=self.state.settings.channels_allow_private)
        except DeliveryError as exc:
            error = str(exc)
        except Exception as exc:  # a bug in a provider must not kill the loop
            log.exception("delivery to %s crashed", target.channel_id)
            error = f"internal error: {type(exc).__name__}"
        else:
            await self._finish(entry_id)
            log.info("delivered %s (%s) to %s on attempt %d", event_id, event.get("event"), target.channel_id,
                     attempt)
            return
        finally:
            toucher.cancel()
        if attempt >= self.max_attempts:
            await self._give_up(entry_id, target, team_id, event, event_id, attempt, error)
        else:
            log.warning("delivery of %s to %s failed (attempt %d/%d): %s", event_id, target.channel_id, attempt,
                        self.max_attempts, error)
            await self._reset_idle(entry_id)  # the retry delay counts from now

    async def _target(self, channel_ref: str) -> tuple[Target | None, uuid.UUID | None]:
        try:
            channel_id = uuid.UUID(channel_ref)
        except ValueError:
            return None, None
        async with self.state.db() as db:
            channel = await db.get(Channel, channel_id)
        if channel is None:
            return None, None
        try:
            config = crypto.decrypt_config(self.state.settings.encryption_key, channel.config)
        except crypto.ConfigDecryptError:
            log.error("channel %s: config does not decrypt with WRENN_ENCRYPTION_KEY; skipped", channel_id)
            return None, channel.team_id
        return Target(ids.encode(ids.CHANNEL, channel.id), channel.provider, config), channel.team_id

    async def _give_up(self, entry_id: str, target: Target, team_id: uuid.UUID | None, event: dict[str, Any],
                       event_id: str, attempts: int, error: str) -> None:
        log.error("delivery of %s to %s failed after %d attempts: %s", event_id, target.channel_id, attempts, error)
        await audit.record_now(self.state, None, team_id, "channel", target.channel_id, "delivery_failed",
                               status="error", metadata={"event": str(event.get("event", "")), "event_id": event_id,
                                                         "provider": target.provider, "attempts": str(attempts),
                                                         "error": error[:500]})
        await self._finish(entry_id)

    async def _finish(self, entry_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(WORK_STREAM, SEND_GROUP, entry_id)
            pipe.xdel(WORK_STREAM, entry_id)
            await pipe.execute()

    async def _reset_idle(self, entry_id: str) -> None:
        with contextlib.suppress(RedisError):
            await self.redis.xclaim(WORK_STREAM, SEND_GROUP, self.consumer, 0, [entry_id], justid=True)

    async def _touch(self, entry_id: str) -> None:
        while True:
            await asyncio.sleep(self.touch_every)
            await self._reset_idle(entry_id)

    # --- retries, crash recovery, housekeeping ------------------------------------------------------

    async def _retry_loop(self) -> None:
        since_gc = 0.0
        while True:
            await self.retry_due()
            await self._reclaim_fanout()
            since_gc += self.tick
            if since_gc >= CONSUMER_GC_EVERY:
                since_gc = 0.0
                await self._forget_dead_consumers()
            await asyncio.sleep(self.tick)

    async def retry_due(self) -> None:
        """Claim failed (or abandoned) deliveries whose next delay has passed, and attempt them again."""
        min_idle = min(self.delays_ms or [0])
        pending: Any = await self.redis.xpending_range(WORK_STREAM, SEND_GROUP, min="-", max="+", count=100,
                                                  idle=min_idle)
        for item in pending:
            entry_id, attempts = item["message_id"], int(item["times_delivered"])
            if entry_id in self.in_flight:
                continue
            delay = self.delays_ms[min(attempts, len(self.delays_ms)) - 1] if self.delays_ms else 0
            if int(item["time_since_delivered"]) < delay:
                continue
            claimed: Any = await self.redis.xclaim(WORK_STREAM, SEND_GROUP, self.consumer, delay, [entry_id])
            for claimed_id, fields in claimed:
                if fields:
                    await self._spawn(claimed_id, fields, attempt=attempts + 1)
                else:  # deleted underneath us
                    await self._finish(claimed_id)

    async def _reclaim_fanout(self) -> None:
        reply: Any = await self.redis.xautoclaim(STREAM, FANOUT_GROUP, self.consumer, FANOUT_RECLAIM_MS, "0-0",
                                            count=50)
        for entry_id, fields in reply[1]:
            await self.fan_out(entry_id, fields)
        for entry_id in reply[2] if len(reply) > 2 else []:  # trimmed from the capped stream
            await self.redis.xack(STREAM, FANOUT_GROUP, entry_id)

    async def _forget_dead_consumers(self) -> None:
        for stream, group in ((STREAM, FANOUT_GROUP), (WORK_STREAM, SEND_GROUP)):
            for info in await self.redis.xinfo_consumers(stream, group):
                if info["name"] != self.consumer and not info["pending"] and info["idle"] > CONSUMER_GC_IDLE_MS:
                    await self.redis.xgroup_delconsumer(stream, group, info["name"])


async def start(state: AppState) -> None:
    dispatcher = Dispatcher(state)
    await dispatcher.start()
    state.extras["channel_dispatcher"] = dispatcher


async def stop(state: AppState) -> None:
    dispatcher: Dispatcher | None = state.extras.pop("channel_dispatcher", None)
    if dispatcher is not None:
        await dispatcher.stop()
