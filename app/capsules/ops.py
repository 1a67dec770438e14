"""Work inside a running capsule: exec, processes and files (control-plane.md §11, sdk-wire.md §7–8)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

from app.auth.identity import Identity
from app.capsules import service
from app.capsules.errors import agent_failure
from app.core import ids
from app.core.errors import ApiError, InvalidRequest, NotFound, Timeout
from app.core.state import AppState
from app.hostagent.client import AgentError
from app.hostagent.proto import hostagent_pb2 as pb

DEFAULT_EXEC_TIMEOUT = 30
MAX_EXEC_TIMEOUT = 24 * 3600
STREAM_CHUNK = 64 * 1024
SIGNALS = ("SIGTERM", "SIGKILL")


def _decode_output(stdout: bytes, stderr: bytes) -> tuple[str, str, str]:
    try:
        return stdout.decode(), stderr.decode(), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(stdout).decode(), base64.b64encode(stderr).decode(), "base64"


def _check_cmd(cmd: str) -> None:
    if not cmd:
        raise InvalidRequest("cmd: field required")


async def exec_foreground(
    state: AppState, who: Identity | None, ref: str, cmd: str, args: list[str], timeout_sec: int | None,
    envs: dict[str, str], cwd: str,
) -> dict[str, Any]:
    _check_cmd(cmd)
    timeout = timeout_sec if timeout_sec and timeout_sec > 0 else DEFAULT_EXEC_TIMEOUT
    timeout = min(timeout, MAX_EXEC_TIMEOUT)
    t = await service.target(state, who, ref)
    request = pb.ExecRequest(sandbox_id=t.ref, cmd=cmd, args=args, timeout_sec=timeout, envs=envs, cwd=cwd)
    started = time.monotonic()
    try:
        # Our own deadline too: the agent may not report a timeout cleanly (hostagent-wire §6).
        reply = await asyncio.wait_for(t.client.exec(request, timeout_s=timeout + 5), timeout + 5)
    except TimeoutError as exc:
        raise Timeout(f"command timed out after {timeout}s") from exc
    except AgentError as exc:
        if exc.code == "deadline_exceeded" or "deadline" in exc.message.lower() or "timed out" in exc.message.lower():
            raise Timeout(f"command timed out after {timeout}s") from exc
        raise _exec_failure(exc) from exc
    duration_ms = int((time.monotonic() - started) * 1000)
    stdout, stderr, encoding = _decode_output(reply.stdout, reply.stderr)
    service.spawn(state, service.touch(state, t.capsule.id), f"touch:{t.capsule.id}")
    return {"sandbox_id": t.ref, "cmd": cmd, "stdout": stdout, "stderr": stderr, "exit_code": reply.exit_code,
            "duration_ms": duration_ms, "encoding": encoding}


def _exec_failure(exc: AgentError) -> ApiError:
    text = exc.message.lower()
    if exc.code == "invalid_argument" or "cwd" in text or "no such file or directory" in text:
        return ApiError(exc.message, code="invalid_request", status=400)
    return agent_failure(exc)


async def exec_background(
    state: AppState, who: Identity | None, ref: str, cmd: str, args: list[str], tag: str,
    envs: dict[str, str], cwd: str,
) -> dict[str, Any]:
    _check_cmd(cmd)
    tag = tag or f"proc-{ids.random_hex(4)}"
    t = await service.target(state, who, ref)
    request = pb.StartBackgroundRequest(sandbox_id=t.ref, cmd=cmd, args=args, tag=tag, envs=envs, cwd=cwd)
    try:
        reply = await t.client.start_background(request)
    except AgentError as exc:
        raise _exec_failure(exc) from exc
    service.spawn(state, service.touch(state, t.capsule.id), f"touch:{t.capsule.id}")
    return {"sandbox_id": t.ref, "cmd": cmd, "pid": reply.pid, "tag": reply.tag or tag}


async def list_processes(state: AppState, who: Identity | None, ref: str) -> dict[str, Any]:
    t = await service.target(state, who, ref)
    try:
        reply = await t.client.list_processes(pb.ListProcessesRequest(sandbox_id=t.ref))
    except AgentError as exc:
        raise agent_failure(exc) from exc
    return {"processes": [{"pid": p.pid, "tag": p.tag, "cmd": p.cmd, "args": list(p.args)} for p in reply.processes]}


def parse_selector(selector: str) -> tuple[int | None, str | None]:
    """An unsigned 32-bit integer is a pid; anything else a tag."""
    if selector.isdigit() and int(selector) < 2**32:
        return int(selector), None
    if not selector or len(selector) > 128:
        raise InvalidRequest("selector: must be a pid or a tag")
    return None, selector


async def kill_process(state: AppState, who: Identity | None, ref: str, selector: str, signal: str) -> None:
    signal = (signal or "SIGKILL").upper()
    if signal not in SIGNALS:
        raise InvalidRequest("signal: must be SIGTERM or SIGKILL")
    pid, tag = parse_selector(selector)
    t = await service.target(state, who, ref)
    request = pb.KillProcessRequest(sandbox_id=t.ref, signal=signal)
    if pid is not None:
        request.pid = pid
    else:
        request.tag = tag or ""
    try:
        await t.client.kill_process(request)
    except AgentError as exc:
        if exc.code == "not_found" or "not found" in exc.message.lower() or "no such process" in exc.message.lower():
            raise NotFound(f"process {selector} not found") from exc
        raise agent_failure(exc) from exc


# --- files ----------------------------------------------------------------------------------


def _check_path(path: str) -> str:
    if not path:
        raise InvalidRequest("path: field required")
    if "\x00" in path or len(path) > 4096:
        raise InvalidRequest("path: invalid path")
    return path


async def write_file(state: AppState, who: Identity | None, ref: str, path: str, content: bytes) -> None:
    t = await service.target(state, who, ref)
    try:
        await t.client.write_file(pb.WriteFileRequest(sandbox_id=t.ref, path=_check_path(path), content=content))
    except AgentError as exc:
        raise agent_failure(exc, path_op=True) from exc


async def read_file(state: AppState, who: Identity | None, ref: str, path: str) -> bytes:
    t = await service.target(state, who, ref)
    try:
        reply = await t.client.read_file(pb.ReadFileRequest(sandbox_id=t.ref, path=_check_path(path)))
    except AgentError as exc:
        raise agent_failure(exc, path_op=True) from exc
    return bytes(reply.content)


def entry_json(e: Any) -> dict[str, Any]:
    kind = e.type if e.type in ("file", "directory", "symlink") else "file"
    return {
        "name": e.name, "path": e.path, "type": kind, "size": e.size, "mode": e.mode,
        "permissions": e.permissions, "owner": e.owner, "group": e.group, "modified_at": e.modified_at,
        "symlink_target": e.symlink_target if e.HasField("symlink_target") else None,
    }


async def list_dir(state: AppState, who: Identity | None, ref: str, path: str, depth: int) -> dict[str, Any]:
    if depth < 0 or depth > 64:
        raise InvalidRequest("depth: must be between 0 and 64")
    t = await service.target(state, who, ref)
    try:
        reply = await t.client.list_dir(pb.ListDirRequest(sandbox_id=t.ref, path=_check_path(path),
                                                          depth=max(depth, 1)))
    except AgentError as exc:
        raise agent_failure(exc, path_op=True) from exc
    return {"entries": [entry_json(e) for e in reply.entries]}


async def make_dir(state: AppState, who: Identity | None, ref: str, path: str) -> dict[str, Any]:
    t = await service.target(state, who, ref)
    try:
        reply = await t.client.make_dir(pb.MakeDirRequest(sandbox_id=t.ref, path=_check_path(path)))
    except AgentError as exc:
        raise agent_failure(exc, path_op=True, mkdir=True) from exc
    return {"entry": entry_json(reply.entry)}


async def remove(state: AppState, who: Identity | None, ref: str, path: str) -> None:
    t = await service.target(state, who, ref)
    try:
        await t.client.remove_path(pb.RemovePathRequest(sandbox_id=t.ref, path=_check_path(path)))
    except AgentError as exc:
        raise agent_failure(exc, path_op=True) from exc


async def write_stream(state: AppState, who: Identity | None, ref: str, path: str,
                       chunks: AsyncIterator[bytes]) -> None:
    t = await service.target(state, who, ref)

    async def messages() -> AsyncIterator[pb.WriteFileStreamRequest]:
        yield pb.WriteFileStreamRequest(meta=pb.WriteFileStreamMeta(sandbox_id=t.ref, path=_check_path(path)))
        async for chunk in chunks:
            for start in range(0, len(chunk), STREAM_CHUNK):
                yield pb.WriteFileStreamRequest(chunk=chunk[start:start + STREAM_CHUNK])

    try:
        await t.client.write_file_stream(messages())
    except AgentError as exc:
        raise agent_failure(exc, path_op=True) from exc


async def open_read_stream(state: AppState, who: Identity | None, ref: str, path: str) -> AsyncIterator[bytes]:
    """Start the download and wait for its first chunk, so a missing file is a clean 404 before headers."""
    t = await service.target(state, who, ref)
    stream = t.client.read_file_stream(pb.ReadFileStreamRequest(sandbox_id=t.ref, path=_check_path(path)))
    iterator = stream.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = None
    except AgentError as exc:
        raise agent_failure(exc, path_op=True) from exc

    async def body() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield bytes(first.chunk)
            async for message in iterator:
                yield bytes(message.chunk)
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    return body()
