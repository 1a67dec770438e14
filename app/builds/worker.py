"""The build worker: runs queued builds on a host and turns them into platform templates.

Queue and leadership
    Submissions ``RPUSH`` the build id onto ``wrenn:build_queue``. Every replica runs the leader loop
    ``build-worker`` (Postgres advisory lock, ``app/core/leader.py``); only the leader ``LPOP``s, at most
    ``CONCURRENCY`` builds at a time, each as its own task. A popped build starts with a compare-and-set
    ``pending → running``, so a duplicate queue entry is harmless.

A build
    provision: a capsule from the base template in the platform team (``capsules.service.create``, metadata
    ``build_id``), no idle timeout; the CP host's CA bundle is lent to it for the build (``build_ca_bundle``).
    steps: each through the agent's ``ExecStream`` (run as root with ``sudo``/``runuser`` or as the default
    user), output kept per step (last ``MAX_LOG`` bytes) and flushed to the row every second; events
    ``build.step.started`` / ``build.step.finished``. ``start`` writes ``/etc/wrenn/start.json``, launches it
    and waits until its port answers (bounded by its ``ready.timeout_sec``); ``check`` must exit 0.
    snapshot: the start process is stopped, the scratch files removed, ``CreateSnapshot`` copies the
    filesystem into a new template id on that host, the build capsule is destroyed, and one transaction
    re-checks the name rules, swaps in the template row and marks the build ``success``.
    failure / cancel: the running step is stopped, the build capsule destroyed (and waited for), then the build
    is marked ``failed`` with the step and the reason (or stays ``cancelled``), and a final event goes out.

Liveness and restarts
    While a build runs, its task refreshes ``wrenn:build_alive:<id>`` (TTL ``HEARTBEAT_TTL``) every second and
    re-reads the row's status (a cancel from any replica is seen within a second). The leader's sweep (at
    leadership and every ``SWEEP_EVERY`` s) fails ``running`` builds nobody heartbeats for — the process that
    ran them died — with a reason naming the step, destroys their capsules, finishes the clean-up of
    cancelled builds whose worker vanished, and re-queues ``pending`` builds missing from the queue. A clean
    shutdown fails its running builds itself ("the control plane shut down").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import time
import uuid
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from app.audit import service as audit
from app.builds import service
from app.builds.models import TemplateBuild
from app.builds.recipe import DEFAULT_USER, ROOT, Step, as_user, port_probe
from app.builds.schemas import (
    META_BUILD_ENV,
    META_CLEANED,
    META_FAILED_STEP,
    META_OVERWRITE,
    META_PHASE,
    META_TEMPLATE,
    StepState,
)
from app.capsules import service as capsules
from app.capsules.models import Capsule
from app.core import clock, ids
from app.core.errors import ApiError
from app.core.state import AppState
from app.events import service as events
from app.hostagent import template_start
from app.hostagent.client import AgentClient, AgentError
from app.hostagent.proto import hostagent_pb2 as pb
from app.snapshots import service as snapshots
from app.snapshots.models import Template

log = logging.getLogger("wrenn.builds.worker")

CONCURRENCY = 2
TICK = 0.5
PULSE = 1.0
HEARTBEAT_TTL = 10
SWEEP_EVERY = 5.0
MAX_LOG = 128 * 1024
PROVISION_LIMIT = 600
SNAPSHOT_LIMIT = 900
DESTROY_WAIT = 60
SCRATCH = "/tmp/.wrenn-build"
START_TAG = "wrenn-build-start"
CA_CANDIDATES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
CA_ENV = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
          "NODE_EXTRA_CA_CERTS")


def alive_key(build_id: uuid.UUID) -> str:
    return f"wrenn:build_alive:{build_id}"


def ca_bundle(setting: str) -> bytes | None:
    """The CA bundle lent to build capsules: ``auto`` = this machine's system bundle, ``none``/empty = none."""
    value = setting.strip()
    if value.lower() in ("", "none", "off", "false"):
        return None
    for candidate in CA_CANDIDATES if value.lower() == "auto" else (value,):
        with contextlib.suppress(OSError):
            return Path(candidate).read_bytes()
    return None


class Cancelled(Exception):
    """The build was cancelled (or the process is shutting down) while it ran."""


class Failure(Exception):
    """The build failed; ``step`` is the failing recipe step (None for provisioning, snapshot, registration)."""

    def __init__(self, message: str, step: Step | None = None, phase: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.step = step
        self.phase = phase


# --- the worker (one per process; acts while its process leads "build-worker") ------------------------


class BuildWorker:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.runs: dict[uuid.UUID, BuildRun] = {}
        self.sweeping: set[uuid.UUID] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._last_sweep = 0.0
        self._leading = False

    def cancel(self, build_id: uuid.UUID) -> None:
        run = self.runs.get(build_id)
        if run is not None:
            run.stop.set()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def tick(self) -> None:
        """One leader turn: sweep when due, then start queued builds while there is capacity."""
        if self.stopping:
            return
        now = time.monotonic()
        if not self._leading or now - self._last_sweep >= SWEEP_EVERY:
            self._leading = True
            self._last_sweep = now
            await self.sweep()
        while len(self.runs) < CONCURRENCY:
            raw: Any = await self.state.redis.lpop(service.QUEUE)  # type: ignore[misc]
            if raw is None:
                break
            try:
                build_id = uuid.UUID(raw.decode() if isinstance(raw, bytes) else str(raw))
            except ValueError:
                log.warning("ignoring malformed build queue entry %r", raw)
                continue
            if build_id in self.runs or build_id in self.sweeping:
                continue
            run = BuildRun(self, build_id)
            self.runs[build_id] = run
            self._spawn(run.main(), f"build:{build_id}")

    async def stop(self) -> None:
        """Process shutdown: running builds fail ("the control plane shut down") and clean up after themselves."""
        self.stopping = True
        for run in self.runs.values():
            run.shutdown = True
            run.stop.set()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=DESTROY_WAIT)

    # --- recovery -------------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Builds whose worker is gone: fail them (running), finish their clean-up (cancelled/failed with a
        capsule not yet removed), re-queue pending builds that fell out of the queue."""
        redis = self.state.redis
        async with self.state.db() as db:
            not_cleaned = func.coalesce(TemplateBuild.metadata_[META_CLEANED].astext, "false") != "true"
            rows = list(await db.scalars(select(TemplateBuild).where(or_(
                TemplateBuild.status.in_(("pending", "running")),
                and_(TemplateBuild.status.in_(("cancelled", "failed")), not_cleaned)))))
        orphans = [b for b in rows if b.status != "pending" and not (b.metadata_ or {}).get(META_CLEANED, False)]
        for build in orphans:
            if build.id in self.runs or build.id in self.sweeping:
                continue
            try:
                if await redis.exists(alive_key(build.id)):
                    continue  # its worker (maybe in another process) is alive
            except RedisError:
                return
            self.sweeping.add(build.id)
            self._spawn(self._recover(build.id), f"build-recover:{build.id}")
        pending = [b.id for b in rows if b.status == "pending" and b.id not in self.runs]
        if pending:
            try:
                queued = {bytes(x).decode() if isinstance(x, bytes) else str(x)
                          for x in await redis.lrange(service.QUEUE, 0, -1)}  # type: ignore[misc]
                for build_id in pending:
                    if str(build_id) not in queued:
                        log.info("re-queueing build %s (missing from the queue)", build_id)
                        await redis.rpush(service.QUEUE, str(build_id))  # type: ignore[misc]
            except RedisError:
                log.warning("could not check the build queue")

    async def _recover(self, build_id: uuid.UUID) -> None:
        try:
            async with self.state.db() as db:
                build = await db.get(TemplateBuild, build_id)
            if build is None:
                return
            if build.status == "running":
                step = next((StepState.from_json(s) for s in (build.logs or [])
                             if isinstance(s, dict) and s.get("status") == "running"), None)
                where = f"at step {step.step} ({step.name!r})" if step else \
                    f"while {(build.metadata_ or {}).get(META_PHASE, 'starting')}"
                reason = (f"the control plane that ran this build stopped {where}; the build was abandoned "
                          "and its build capsule removed")
                await destroy_capsule(self.state, build)
                await finish_failed(self.state, build_id, reason, step_index=step.step if step else None,
                                    step_name=step.name if step else "", phase="interrupted", running_as="failed")
            else:
                await destroy_capsule(self.state, build)
                await mark_cleaned(self.state, build_id, announce_cancel=build.status == "cancelled")
        except Exception:
            log.exception("recovery of build %s failed; retrying at the next sweep", build_id)
        finally:
            self.sweeping.discard(build_id)


# --- helpers shared by runs and recovery -----------------------------------------------------------------


async def destroy_capsule(state: AppState, build: TemplateBuild) -> None:
    """Destroy the build capsule (if any) and wait until it is stopped."""
    if build.sandbox_id is None:
        return
    capsule_ref = ids.encode(ids.CAPSULE, build.sandbox_id)
    try:
        await capsules.destroy(state, None, capsule_ref, actor=service.creator(build), scope="admin")
    except ApiError as exc:
        log.warning("destroy of build capsule %s: %s", capsule_ref, exc.message)
        return
    deadline = time.monotonic() + DESTROY_WAIT
    while time.monotonic() < deadline:
        async with state.db() as db:
            capsule = await db.get(Capsule, build.sandbox_id)
        if capsule is None or capsule.status in ("stopped", "error"):
            return
        await asyncio.sleep(0.2)
    log.warning("build capsule %s still not stopped after %ss", capsule_ref, DESTROY_WAIT)


async def mark_cleaned(state: AppState, build_id: uuid.UUID, *, announce_cancel: bool) -> None:
    async with state.db() as db, db.begin():
        build = await db.get(TemplateBuild, build_id, with_for_update=True)
        if build is None:
            return
        build.logs = [{**s, "status": "skipped"} if s.get("status") == "pending" else
                      ({**s, "status": "cancelled", "finished_at": clock.iso(clock.now())}
                       if s.get("status") == "running" else s) for s in (build.logs or [])]
        build.metadata_ = {**(build.metadata_ or {}), META_CLEANED: True, META_PHASE: "done"}
    if announce_cancel:
        await service.publish(state, "build.cancelled", build_id, metadata={"name": build.name})


async def finish_failed(state: AppState, build_id: uuid.UUID, reason: str, *, step_index: int | None,
                        step_name: str, phase: str, running_as: str, logs: list[dict[str, Any]] | None = None,
                        current_step: int | None = None) -> None:
    """CAS ``running → failed`` with the reason and the failing step; announce ``build.failed``. When the build
    was cancelled meanwhile, it stays cancelled (and ``build.cancelled`` is announced instead)."""
    async with state.db() as db, db.begin():
        build = await db.get(TemplateBuild, build_id, with_for_update=True)
        if build is None:
            return
        states = logs if logs is not None else list(build.logs or [])
        states = [{**s, "status": "skipped"} if s.get("status") == "pending" else
                  ({**s, "status": running_as, "finished_at": clock.iso(clock.now()),
                    "error": s.get("error") or reason} if s.get("status") == "running" else s) for s in states]
        meta = {**(build.metadata_ or {}), META_CLEANED: True, META_PHASE: "done"}
        cancelled = build.status == "cancelled"
        if build.status == "running":
            build.status = "failed"
            build.error = reason
            build.completed_at = clock.now()
            meta[META_FAILED_STEP] = {"index": step_index, "name": step_name, "phase": phase}
            if current_step is not None:
                build.current_step = current_step
        elif not cancelled:
            return  # already finished by someone else
        build.logs = states
        build.metadata_ = meta
        name = build.name
        if not cancelled:
            await audit.record(db, None, ids.ZERO_UUID, service.RESOURCE, service.ref(build_id), "build",
                               scope="admin", status="error",
                               metadata={"name": name, "error": reason[:500], "step": step_index})
    if cancelled:
        await service.publish(state, "build.cancelled", build_id, metadata={"name": name})
    else:
        await service.publish(state, "build.failed", build_id, outcome="error", error=reason,
                              metadata={"name": name, "step": step_index, "step_name": step_name, "phase": phase})


# --- one build ----------------------------------------------------------------------------------------------


class BuildRun:
    def __init__(self, worker: BuildWorker, build_id: uuid.UUID) -> None:
        self.worker = worker
        self.state = worker.state
        self.id = build_id
        self.ref = service.ref(build_id)
        self.stop = asyncio.Event()
        self.shutdown = False
        self.steps: list[Step] = []
        self.states: list[StepState] = []
        self.build: TemplateBuild | None = None
        self.dirty = False
        self.current = 0
        self.phase = "provisioning"
        self.capsule_ref = ""
        self.client: AgentClient | None = None
        self.exec_user = ROOT
        self.env: dict[str, str] = {}  # build env + CA + env steps, passed to every command
        self.template_env: dict[str, str] = {}  # the template's default env (base + env steps)
        self.workdir = ""
        self.started_start = False

    # --- lifecycle -----------------------------------------------------------------------------------

    async def main(self) -> None:
        pulse: asyncio.Task[None] | None = None
        try:
            if not await self._begin():
                return
            pulse = asyncio.create_task(self._pulse(), name=f"build-pulse:{self.id}")
            try:
                await self._provision()
                for step in self.steps:
                    await self._run_step(step)
                await self._finish()
            except Cancelled:
                await self._stop_pulse(pulse)
                await self._cancelled()
            except Failure as failure:
                await self._stop_pulse(pulse)
                await self._failed(failure)
        except Exception as exc:
            log.exception("build %s crashed", self.id)
            await self._stop_pulse(pulse)
            with contextlib.suppress(Exception):
                await self._failed(Failure(f"internal error in the build worker: {exc}", phase=self.phase))
        finally:
            await self._stop_pulse(pulse)
            self.worker.runs.pop(self.id, None)
            with contextlib.suppress(RedisError):
                await self.state.redis.delete(alive_key(self.id))

    async def _begin(self) -> bool:
        with contextlib.suppress(RedisError):
            await self.state.redis.set(alive_key(self.id), "1", ex=HEARTBEAT_TTL)
        async with self.state.db() as db, db.begin():
            build = await db.get(TemplateBuild, self.id, with_for_update=True)
            if build is None or build.status != "pending":
                return False
            build.status = "running"
            build.started_at = clock.now()
            build.metadata_ = {**(build.metadata_ or {}), META_PHASE: "provisioning"}
        self.build = build
        self.steps = [Step.from_json(s) for s in build.recipe]
        self.states = [StepState.from_json(s) for s in build.logs]
        self.env = {str(k): str(v) for k, v in ((build.metadata_ or {}).get(META_BUILD_ENV) or {}).items()}
        return True

    async def _stop_pulse(self, pulse: asyncio.Task[None] | None) -> None:
        if pulse is not None and not pulse.done():
            pulse.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pulse

    async def _pulse(self) -> None:
        """Every second: heartbeat, flush logs, and notice a cancel made on another replica."""
        while True:
            await asyncio.sleep(PULSE)
            try:
                await self._flush()
            except Exception:
                log.exception("build %s: flush failed", self.id)

    async def _flush(self) -> None:
        with contextlib.suppress(RedisError):
            await self.state.redis.set(alive_key(self.id), "1", ex=HEARTBEAT_TTL)
        async with self.state.db() as db, db.begin():
            if self.dirty:
                self.dirty = False
                values: dict[str, Any] = {"logs": [s.to_json() for s in self.states], "current_step": self.current}
                result = await db.execute(update(TemplateBuild).where(
                    TemplateBuild.id == self.id, TemplateBuild.status == "running").values(**values)
                    .returning(TemplateBuild.id))
                still = result.first() is not None
            else:
                still = (await db.scalar(select(TemplateBuild.status).where(TemplateBuild.id == self.id))) == "running"
        if not still:
            self.stop.set()

    async def _set_phase(self, phase: str) -> None:
        self.phase = phase
        async with self.state.db() as db, db.begin():
            build = await db.get(TemplateBuild, self.id, with_for_update=True)
            if build is not None and build.status == "running":
                build.metadata_ = {**(build.metadata_ or {}), META_PHASE: phase}

    async def _race(self, coro: Any) -> Any:
        """Await ``coro`` unless the build is stopped first (then the work is cancelled: Cancelled)."""
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise Cancelled()

    # --- provisioning --------------------------------------------------------------------------------------

    async def _provision(self) -> None:
        assert self.build is not None
        build = self.build
        spec = {"template": build.base_template, "vcpus": build.vcpus, "memory_mb": build.memory_mb, "timeout_sec": 0,
                "metadata": {"build_id": self.ref, "build_template": build.name}}
        try:
            capsule = await capsules.create(self.state, service.creator(build), spec, team_id=ids.ZERO_UUID,
                                            scope="admin")
        except ApiError as exc:
            raise Failure(f"could not create the build capsule: {exc.message}", phase="provisioning") from exc
        self.capsule_ref = str(capsule["id"])
        capsule_id = ids.decode(ids.CAPSULE, self.capsule_ref)
        async with self.state.db() as db, db.begin():
            row = await db.get(Capsule, capsule_id)
            host_id = row.host_id if row else None
            await db.execute(update(TemplateBuild).where(TemplateBuild.id == self.id)
                             .values(sandbox_id=capsule_id, host_id=host_id))
        build.sandbox_id, build.host_id = capsule_id, host_id
        await self._race(self._wait_running(capsule_id))
        try:
            target = await capsules.target(self.state, None, self.capsule_ref)
        except ApiError as exc:
            raise Failure(f"build capsule unreachable: {exc.message}", phase="provisioning") from exc
        self.client = target.client
        async with self.state.db() as db:
            base = await db.scalar(select(Template).where(Template.name == build.base_template,
                                                          Template.team_id == ids.ZERO_UUID))
        self.template_env = {str(k): str(v) for k, v in ((base.default_env if base else None) or {}).items()}
        self.env = {**self.template_env, **self.env}
        code, out = await self._exec_plain("id -un", 30)
        if code != 0 or not out.strip():
            raise Failure(f"build capsule: cannot determine the exec user: {out.strip()[:300]}", phase="provisioning")
        self.exec_user = out.strip().splitlines()[-1]
        code, out = await self._exec_plain(f"mkdir -p {SCRATCH} && chmod 0777 {SCRATCH}", 30)
        if code != 0:
            raise Failure(f"build capsule: cannot create {SCRATCH}: {out.strip()[:300]}", phase="provisioning")
        ca = ca_bundle(self.state.settings.build_ca_bundle)
        if ca is not None:
            await self._write(f"{SCRATCH}/ca.pem", ca)
            self.env.update({k: f"{SCRATCH}/ca.pem" for k in CA_ENV})
        await self._set_phase("steps")

    async def _wait_running(self, capsule_id: uuid.UUID) -> None:
        deadline = time.monotonic() + PROVISION_LIMIT
        while time.monotonic() < deadline:
            async with self.state.db() as db:
                row = await db.get(Capsule, capsule_id)
            if row is None or row.status in ("error", "stopped", "stopping"):
                reason = (row.error if row is not None else "") or (row.status if row is not None else "gone")
                raise Failure(f"the build capsule failed to start: {reason}", phase="provisioning")
            if row.status == "running":
                return
            await asyncio.sleep(0.2)
        raise Failure(f"the build capsule did not start within {PROVISION_LIMIT}s", phase="provisioning")

    # --- agent calls ------------------------------------------------------------------------------------

    def _agent(self) -> AgentClient:
        assert self.client is not None
        return self.client

    async def _exec_plain(self, script: str, limit: int) -> tuple[int, str]:
        """A short command as the exec user (bookkeeping, not a recipe step)."""
        try:
            reply = await self._race(self._agent().exec(
                pb.ExecRequest(sandbox_id=self.capsule_ref, cmd="/bin/sh", args=["-c", script], timeout_sec=limit),
                timeout_s=limit + 15))
        except AgentError as exc:
            return -1, exc.message
        return int(reply.exit_code), (reply.stdout + reply.stderr).decode(errors="replace")

    async def _write(self, path: str, content: bytes) -> None:
        try:
            await self._race(self._agent().write_file(
                pb.WriteFileRequest(sandbox_id=self.capsule_ref, path=path, content=content), timeout_s=120))
        except AgentError as exc:
            raise Failure(f"writing {path} into the build capsule failed: {exc.message}", phase=self.phase) from exc

    def _log(self, st: StepState, data: bytes | str) -> None:
        text = data.decode(errors="replace") if isinstance(data, bytes) else data
        out = st.output + text
        if len(out) > MAX_LOG:
            st.truncated += len(out) - MAX_LOG
            out = out[-MAX_LOG:]
        st.output = out
        self.dirty = True

    async def _stream(self, st: StepState, command: str, limit: int) -> tuple[int, str]:
        """Run ``command`` (``/bin/sh -c``) streaming its output into the step's log; (exit code, error)."""
        request = pb.ExecStreamRequest(sandbox_id=self.capsule_ref, cmd="/bin/sh", args=["-c", command],
                                       timeout_sec=limit)
        code, error = -1, ""

        async def consume() -> None:
            nonlocal code, error
            async for msg in self._agent().exec_stream(request, timeout_s=limit + 30):
                kind = msg.WhichOneof("event")
                if kind == "data":
                    self._log(st, msg.data.stdout or msg.data.stderr)
                elif kind == "end":
                    code, error = int(msg.end.exit_code), msg.end.error
                    return

        try:
            await self._race(consume())
        except AgentError as exc:
            return -1, exc.message
        return code, error

    # --- steps -------------------------------------------------------------------------------------------

    def _user(self, user: str) -> str:
        assert self.build is not None
        return (self.build.default_user or ROOT) if user == DEFAULT_USER else user

    async def _run_step(self, step: Step) -> None:
        st = self.states[step.index - 1]
        st.status, st.started_at = "running", clock.iso(clock.now())
        self.current = step.index
        self.dirty = True
        await self._flush()
        await service.publish(self.state, "build.step.started", self.id,
                              metadata={"step": step.index, "name": step.name, "kind": step.kind,
                                        "total_steps": len(self.steps)})
        started = time.monotonic()
        try:
            error = await self._execute(step, st)
        except Cancelled:
            self._end(st, "cancelled", started, "cancelled")
            await self._announce_step(step, st)
            raise
        except Failure as failure:
            error = failure.message
        if error:
            self._end(st, "failed", started, error)
            await self._announce_step(step, st)
            raise Failure(f"step {step.index} ({step.name!r}) failed: {error}", step, phase="steps")
        self._end(st, "success", started, None)
        await self._announce_step(step, st)

    def _end(self, st: StepState, status: str, started: float, error: str | None) -> None:
        st.status, st.error = status, error
        st.finished_at = clock.iso(clock.now())
        st.duration_ms = int((time.monotonic() - started) * 1000)
        self.dirty = True

    async def _announce_step(self, step: Step, st: StepState) -> None:
        with contextlib.suppress(Exception):
            await self._flush()
        await service.publish(self.state, "build.step.finished", self.id,
                              metadata={"step": step.index, "name": step.name, "kind": step.kind,
                                        "status": st.status, "exit_code": st.exit_code, "duration_ms": st.duration_ms,
                                        "total_steps": len(self.steps)},
                              error=st.error if st.status == "failed" else None)

    async def _execute(self, step: Step, st: StepState) -> str | None:
        """Do one step; returns an error message, or None on success."""
        if step.kind in ("run", "check"):
            user = self._user(step.user)
            command = as_user(step.run, user=user, exec_user=self.exec_user, env=self.env, cwd=self.workdir)
            code, error = await self._stream(st, command, step.timeout_sec)
            st.exit_code = code
            if error:
                return f"timed out after {step.timeout_sec}s" if "deadline" in error.lower() else error
            return None if code == 0 else f"exit code {code}"
        if step.kind == "env":
            self.env.update(step.env)
            self.template_env.update(step.env)
            self._log(st, "".join(f"{k}={v}\n" for k, v in step.env.items()))
            return None
        if step.kind == "workdir":
            code, error = await self._root(st, f"mkdir -p {shlex.quote(step.path)}")
            if code != 0:
                return error or f"cannot create {step.path} (exit code {code})"
            self.workdir = step.path
            self._log(st, f"working directory: {step.path}\n")
            return None
        if step.kind == "file":
            return await self._install(st, step.path, step.content, step.mode, self._user(step.owner))
        if step.kind == "start":
            return await self._start(st, step)
        return f"unknown step kind {step.kind!r}"

    async def _root(self, st: StepState, script: str, limit: int = 120) -> tuple[int, str]:
        return await self._stream(st, as_user(script, user=ROOT, exec_user=self.exec_user, env={}, cwd="/"), limit)

    async def _install(self, st: StepState, path: str, content: bytes, mode: int, owner: str) -> str | None:
        staged = f"{SCRATCH}/file-{uuid.uuid4().hex[:12]}"
        await self._write(staged, content)
        q = shlex.quote(owner)
        code, error = await self._root(st, f"install -D -m {mode:04o} -o {q} -g \"$(id -gn {q})\" {staged} "
                                           f"{shlex.quote(path)} && rm -f {staged}")
        if code != 0:
            return error or f"cannot install {path} (exit code {code})"
        self._log(st, f"wrote {path} ({len(content)} bytes, mode {mode:04o}, owner {owner})\n")
        return None

    async def _start(self, st: StepState, step: Step) -> str | None:
        """Write ``/etc/wrenn/start.json`` (the snapshot inherits it), then launch the command the way the
        runtime will at create and wait until its port answers (bounded by ``ready.timeout_sec``)."""
        assert step.start is not None and self.build is not None
        spec = step.start
        error = await self._install(st, template_start.START_PATH,
                                    (json.dumps(spec.to_json(), indent=2) + "\n").encode(), 0o644, ROOT)
        if error:
            return error
        user = spec.user or self.build.default_user or ROOT
        inner = as_user(spec.cmd, user=user, exec_user=self.exec_user, env={**self.template_env, **spec.env},
                        cwd=spec.cwd)
        launch = f"exec >{SCRATCH}/start.log 2>&1; {inner}"
        try:
            await self._race(self._agent().start_background(pb.StartBackgroundRequest(
                sandbox_id=self.capsule_ref, cmd="/bin/sh", args=["-c", launch], tag=START_TAG), timeout_s=60))
        except AgentError as exc:
            return f"the start command could not be launched: {exc.message}"
        self.started_start = True
        self._log(st, f"started: {spec.cmd}\n")
        if spec.ready_port:
            probe = port_probe(spec.ready_port, spec.ready_timeout)
            code, _ = await self._stream(st, f"exec bash -c {shlex.quote(probe)}", int(spec.ready_timeout) + 15)
            if code != 0:
                alive = await self._start_alive()
                why = (f"readiness check failed: port {spec.ready_port} did not answer within {spec.ready_timeout:g}s"
                       + ("" if alive else " (the start command exited)"))
                await self._start_log(st)
                return why
        else:
            await self._race(asyncio.sleep(1.0))
            if not await self._start_alive():
                await self._start_log(st)
                return "the start command exited right away"
        return None

    async def _start_alive(self) -> bool:
        try:
            reply = await self._agent().list_processes(pb.ListProcessesRequest(sandbox_id=self.capsule_ref),
                                                       timeout_s=30)
        except AgentError:
            return False
        return any(p.tag == START_TAG for p in reply.processes)

    async def _start_log(self, st: StepState) -> None:
        code, out = await self._exec_plain(f"tail -c 4000 {SCRATCH}/start.log 2>/dev/null", 30)
        if out.strip():
            self._log(st, "--- start command output ---\n" + out)

    # --- endings -----------------------------------------------------------------------------------------

    async def _finish(self) -> None:
        """Snapshot the capsule into a new template id, remove the capsule, then register the template."""
        assert self.build is not None
        build = self.build
        await self._set_phase("snapshot")
        if self.started_start:
            with contextlib.suppress(AgentError):
                await self._agent().kill_process(pb.KillProcessRequest(
                    sandbox_id=self.capsule_ref, tag=START_TAG, signal="SIGKILL"), timeout_s=30)
            await asyncio.sleep(0.3)
        code, out = await self._exec_plain(
            as_user(f"rm -rf {SCRATCH}", user=ROOT, exec_user=self.exec_user, env={}, cwd="/"), 60)
        if code != 0:
            raise Failure(f"cleaning the build files failed: {out.strip()[:300]}", phase="snapshot")
        if self.stop.is_set():
            raise Cancelled()
        template_id = ids.new_uuid()
        request = pb.CreateSnapshotRequest(sandbox_id=self.capsule_ref, name=build.name, team_id=str(ids.ZERO_UUID),
                                           template_id=str(template_id))
        try:
            # Not raced with cancel: an interrupted copy would leave files behind; a cancel is honoured after it.
            reply = await asyncio.wait_for(self._agent().create_snapshot(request, timeout_s=SNAPSHOT_LIMIT),
                                           SNAPSHOT_LIMIT + 10)
        except (AgentError, TimeoutError) as exc:
            message = exc.message if isinstance(exc, AgentError) else "timed out"
            await snapshots._delete_files(self.state, ids.ZERO_UUID, template_id)
            raise Failure(f"snapshot failed: {message}", phase="snapshot") from exc
        await self._set_phase("cleanup")
        await destroy_capsule(self.state, build)
        if self.stop.is_set():
            await snapshots._delete_files(self.state, ids.ZERO_UUID, template_id)
            raise Cancelled()
        try:
            replaced = await self._register(template_id, int(reply.size_bytes))
        except (ApiError, IntegrityError) as exc:
            await snapshots._delete_files(self.state, ids.ZERO_UUID, template_id)
            message = exc.message if isinstance(exc, ApiError) else f"a template named {build.name!r} already exists"
            raise Failure(f"registering the template failed: {message}", phase="register") from exc
        if replaced is None:  # the build was cancelled (or failed elsewhere) meanwhile
            await snapshots._delete_files(self.state, ids.ZERO_UUID, template_id)
            raise Cancelled()
        if replaced != (ids.ZERO_UUID, ids.ZERO_UUID):
            capsules.spawn(self.state, snapshots._retire_files(self.state, *replaced), f"retire:{replaced[1]}")
        who = service.creator(build)
        await events.publish(self.state.redis, events.make_event(
            "template.snapshot.create", ids.ZERO_UUID, build.name, "snapshot", who=who, outcome="success",
            metadata={"name": build.name, "build_id": self.ref}))
        await service.publish(self.state, "build.succeeded", self.id, outcome="success",
                              metadata={"name": build.name, "template": build.name,
                                        "size_bytes": int(reply.size_bytes)})

    async def _register(self, template_id: uuid.UUID, size: int) -> tuple[uuid.UUID, uuid.UUID] | None:
        """One transaction: build ``running → success`` and the template row in place. Returns the (team, id)
        of a replaced template (zeros when none), or None when the build is no longer running."""
        assert self.build is not None
        build = self.build
        for st in self.states:
            if st.status == "pending":
                st.status = "skipped"
        async with self.state.db() as db, db.begin():
            row = await db.get(TemplateBuild, self.id, with_for_update=True)
            if row is None or row.status != "running":
                return None
            meta = dict(row.metadata_ or {})
            old = await service.check_name(db, build.name, bool(meta.get(META_OVERWRITE)), lock=True)
            replaced = (old.team_id, old.id) if old is not None else (ids.ZERO_UUID, ids.ZERO_UUID)
            if old is not None:
                await db.delete(old)
                await db.flush()
            who = service.creator(build)
            metadata: dict[str, Any] = {"build_id": self.ref}
            if build.host_id:
                metadata[snapshots.HOST_KEY] = ids.encode(ids.HOST, build.host_id)
            db.add(Template(id=template_id, name=build.name, type="base", vcpus=build.vcpus, memory_mb=build.memory_mb,
                            size_bytes=size, created_at=clock.now(), team_id=ids.ZERO_UUID,
                            default_user=build.default_user or ROOT, default_env=dict(self.template_env),
                            metadata_=metadata, created_by=who.user_id))
            row.status = "success"
            row.completed_at = clock.now()
            row.template_id = template_id
            row.current_step = len(self.steps)
            row.default_env = dict(self.template_env)
            row.logs = [s.to_json() for s in self.states]
            row.metadata_ = {**meta, META_PHASE: "done", META_CLEANED: True, META_TEMPLATE: build.name}
            await audit.record(db, who, ids.ZERO_UUID, "template", build.name, "create", scope="admin",
                               metadata={"build_id": self.ref, "size_bytes": size, "replaced": old is not None})
        return replaced

    async def _failed(self, failure: Failure) -> None:
        assert self.build is not None
        await destroy_capsule(self.state, self.build)
        step = failure.step
        await finish_failed(self.state, self.id, failure.message, step_index=step.index if step else None,
                            step_name=step.name if step else failure.phase, phase=failure.phase or self.phase,
                            running_as="failed", logs=[s.to_json() for s in self.states], current_step=self.current)

    async def _cancelled(self) -> None:
        assert self.build is not None
        await destroy_capsule(self.state, self.build)
        if self.shutdown:
            for st in self.states:
                if st.status == "cancelled":
                    st.status = "failed"
            step = next((s for s in self.steps if self.states[s.index - 1].status == "failed"), None)
            await finish_failed(self.state, self.id, "the control plane shut down during the build",
                                step_index=step.index if step else None, step_name=step.name if step else self.phase,
                                phase=self.phase, running_as="failed", logs=[s.to_json() for s in self.states],
                                current_step=self.current)
            return
        async with self.state.db() as db, db.begin():
            row = await db.get(TemplateBuild, self.id, with_for_update=True)
            if row is None:
                return
            row.logs = [s.to_json() for s in self.states]
            row.current_step = self.current
        await mark_cleaned(self.state, self.id, announce_cancel=row.status == "cancelled")


# --- wiring (app/main.py) ---------------------------------------------------------------------------------


def worker_of(state: AppState) -> BuildWorker:
    worker: BuildWorker | None = state.extras.get("build_worker")
    if worker is None:
        worker = BuildWorker(state)
        state.extras["build_worker"] = worker
    return worker


async def start(state: AppState) -> None:
    worker_of(state)


async def stop(state: AppState) -> None:
    worker: BuildWorker | None = state.extras.get("build_worker")
    if worker is not None:
        await worker.stop()
