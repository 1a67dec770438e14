"""Exec, processes and files over HTTP, as the SDK uses them (sdk-wire.md §7–8)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import AsyncIterator

import pytest

from tests.api.helpers import Client
from tests.capsules.conftest import Stack
from tests.capsules.helpers import new_capsule, run


@pytest.fixture(scope="module")
def capsule_box() -> dict[str, str]:
    return {}


@pytest.fixture
async def capsule(sdk: Client, capsule_box: dict[str, str]) -> str:
    """One running capsule shared by the module's tests (creating one per test would dominate the time)."""
    if "id" not in capsule_box:
        capsule_box["id"] = await new_capsule(sdk)
    return capsule_box["id"]


async def test_exec_envs_cwd_exit_codes(sdk: Client, capsule: str) -> None:
    r = await run(sdk, capsule, 'printf "%s" "$X"', envs={"X": "a b&c|d;e"})
    assert r["stdout"] == "a b&c|d;e" and r["encoding"] == "utf-8"
    assert (await run(sdk, capsule, "printf %s \"$X\""))["stdout"] == ""  # nothing leaks between calls
    await run(sdk, capsule, "mkdir -p /home/wrenn-user/sub/dir")
    assert (await run(sdk, capsule, "pwd", cwd="sub"))["stdout"] == "/home/wrenn-user/sub\n"
    assert (await run(sdk, capsule, "pwd", cwd="/home/wrenn-user/sub/dir"))["stdout"] == "/home/wrenn-user/sub/dir\n"
    assert (await run(sdk, capsule, "exit 42"))["exit_code"] == 42
    r = await run(sdk, capsule, "sleep 1")
    assert r["duration_ms"] >= 900
    r = await sdk.post(f"/v1/capsules/{capsule}/exec", json={"cmd": "/bin/sh", "args": ["-c", "true"],
                                                             "cwd": "/does/not/exist"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"


async def test_exec_binary_output_is_base64(sdk: Client, capsule: str) -> None:
    r = await run(sdk, capsule, "printf '\\377\\376ok'")
    assert r["encoding"] == "base64" and base64.b64decode(r["stdout"]) == b"\xff\xfeok"


async def test_exec_timeout_is_an_error_within_bounds(sdk: Client, capsule: str) -> None:
    started = time.monotonic()
    r = await sdk.post(f"/v1/capsules/{capsule}/exec",
                       json={"cmd": "/bin/sh", "args": ["-c", "sleep 20"], "timeout_sec": 2})
    elapsed = time.monotonic() - started
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    assert elapsed < 2 + 8
    # The capsule is still usable afterwards and the sleeper is gone.
    assert "sleep 20" not in (await run(sdk, capsule, "ps -eo args"))["stdout"]


async def test_background_processes_list_and_kill(sdk: Client, capsule: str) -> None:
    started = time.monotonic()
    r = await sdk.post(f"/v1/capsules/{capsule}/exec",
                       json={"cmd": "/bin/sh", "args": ["-c", "sleep 60"], "background": True, "tag": "sleeper"})
    assert r.status_code == 202 and time.monotonic() - started < 5
    proc = r.json()
    assert proc["pid"] > 0 and proc["tag"] == "sleeper"
    r = await sdk.post(f"/v1/capsules/{capsule}/exec",
                       json={"cmd": "/bin/sh", "args": ["-c", "sleep 61"], "background": True})
    auto_tag = r.json()["tag"]
    assert auto_tag.startswith("proc-") and len(auto_tag) == 13
    await asyncio.sleep(0.5)
    listed = (await sdk.get(f"/v1/capsules/{capsule}/processes")).json()["processes"]
    assert {p["pid"] for p in listed} >= {proc["pid"]}
    assert (await sdk.delete(f"/v1/capsules/{capsule}/processes/{proc['pid']}")).status_code == 204
    assert (await sdk.delete(f"/v1/capsules/{capsule}/processes/{auto_tag}?signal=SIGTERM")).status_code == 204
    await asyncio.sleep(0.5)
    listed = (await sdk.get(f"/v1/capsules/{capsule}/processes")).json()["processes"]
    assert proc["pid"] not in {p["pid"] for p in listed}
    r = await sdk.delete(f"/v1/capsules/{capsule}/processes/999999")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await sdk.delete(f"/v1/capsules/{capsule}/processes/1?signal=SIGHUP")
    assert r.status_code == 400


def _multipart(path: str, data: bytes, boundary: str = "0123456789abcdef0123456789abcdef") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n{path}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"upload\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def _upload(sdk: Client, capsule: str, path: str, data: bytes) -> int:
    body, ctype = _multipart(path, data)
    r = await sdk.post(f"/v1/capsules/{capsule}/files/write", content=body, headers={"content-type": ctype})
    return r.status_code


async def test_files_write_read_list_mkdir_remove(sdk: Client, capsule: str) -> None:
    base = f"/v1/capsules/{capsule}/files"
    assert await _upload(sdk, capsule, "deep/a/b/c.bin", b"\x00\x01\x02\xff") == 204
    r = await sdk.post(f"{base}/read", json={"path": "/home/wrenn-user/deep/a/b/c.bin"})
    assert r.status_code == 200 and r.content == b"\x00\x01\x02\xff"
    assert await _upload(sdk, capsule, "/home/wrenn-user/deep/a/b/c.bin", b"new") == 204  # overwrite
    assert (await sdk.post(f"{base}/read", json={"path": "deep/a/b/c.bin"})).content == b"new"
    await run(sdk, capsule, "touch /home/wrenn-user/.hidden")
    entries = (await sdk.post(f"{base}/list", json={"path": "/home/wrenn-user", "depth": 1})).json()["entries"]
    names = {e["name"]: e for e in entries}
    assert ".hidden" in names and names["deep"]["type"] == "directory"
    assert isinstance(names[".hidden"]["modified_at"], int) and names[".hidden"]["owner"] == "wrenn-user"
    deeper = (await sdk.post(f"{base}/list", json={"path": "/home/wrenn-user", "depth": 2})).json()["entries"]
    assert len(deeper) >= len(entries)
    r = await sdk.post(f"{base}/list", json={"path": "/nope/missing", "depth": 1})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await sdk.post(f"{base}/read", json={"path": "/nope/missing.txt"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

    r = await sdk.post(f"{base}/mkdir", json={"path": "/home/wrenn-user/x/y/z"})
    assert r.status_code == 200 and r.json()["entry"]["type"] == "directory" and r.json()["entry"]["name"] == "z"
    r = await sdk.post(f"{base}/mkdir", json={"path": "/home/wrenn-user/x/y/z"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_exists"
    assert (await sdk.post(f"{base}/remove", json={"path": "/home/wrenn-user/x"})).status_code == 204
    r = await sdk.post(f"{base}/list", json={"path": "/home/wrenn-user/x", "depth": 1})
    assert r.status_code == 404


async def test_upload_limits_and_bad_multipart(sdk: Client, capsule: str, stack: Stack) -> None:
    base = f"/v1/capsules/{capsule}/files"
    assert await _upload(sdk, capsule, "empty.txt", b"") == 204  # a 0-byte file is a valid file
    assert (await sdk.post(f"{base}/read", json={"path": "empty.txt"})).content == b""
    r = await sdk.post(f"{base}/write", content=b"not multipart", headers={"content-type": "text/plain"})
    assert r.status_code == 400
    body, ctype = _multipart("", b"x")
    r = await sdk.post(f"{base}/write", content=body, headers={"content-type": ctype})
    assert r.status_code == 400 and "path" in r.json()["error"]["message"]
    big = os.urandom(1024) * (100 * 1024 + 1)  # just over 100 MB
    body, ctype = _multipart("big.bin", big)
    r = await sdk.post(f"{base}/write", content=body, headers={"content-type": ctype})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    r = await sdk.post(f"{base}/list", json={"path": "/home/wrenn-user"})
    assert "big.bin" not in {e["name"] for e in r.json()["entries"]}


async def test_streaming_upload_and_download(sdk: Client, capsule: str) -> None:
    boundary = "fedcba9876543210fedcba9876543210"
    chunk = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB
    count = 160  # 10 MiB

    async def body() -> AsyncIterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\nstream.bin\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"upload.bin\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        for _ in range(count):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    r = await sdk.post(f"/v1/capsules/{capsule}/files/stream/write", content=body(),
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 204, r.text
    expected = hashlib.sha256(chunk * count).hexdigest()
    got = hashlib.sha256()
    async with sdk.http.stream("POST", f"/v1/capsules/{capsule}/files/stream/read",
                               json={"path": "stream.bin"}) as resp:
        assert resp.status_code == 200
        async for part in resp.aiter_bytes():
            got.update(part)
    assert got.hexdigest() == expected
    r = await sdk.post(f"/v1/capsules/{capsule}/files/stream/read", json={"path": "missing.bin"})
    assert r.status_code == 404


async def test_wrong_states_and_other_teams(sdk: Client, live: object, stack: Stack) -> None:
    from tests.api.helpers import Platform

    assert isinstance(live, Platform)
    r = await sdk.get("/v1/capsules/cl-" + "0" * 25)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await sdk.get("/v1/capsules/not-an-id")
    assert r.status_code == 400
    capsule = await new_capsule(sdk)
    other = await live.user()
    key = (await other.post("/v1/api-keys", json={"name": "k"})).json()["key"]
    stranger = live.client(headers={"X-API-Key": key})
    for method, path, body in [
        ("GET", "", None), ("DELETE", "", None), ("POST", "/pause", None), ("POST", "/exec", {"cmd": "id"}),
        ("POST", "/files/read", {"path": "/etc/hostname"}), ("GET", "/processes", None), ("POST", "/ping", None),
    ]:
        r = await stranger.request(method, f"/v1/capsules/{capsule}{path}", json=body)
        assert r.status_code == 404, (method, path, r.text)
    assert capsule not in [c["id"] for c in (await stranger.get("/v1/capsules")).json()]
    r = await sdk.post("/v1/capsules/" + capsule + "/resume")
    assert r.status_code == 202 and r.json()["status"] == "running"  # already running: accepted as is
    r = await sdk.post("/v1/capsules", json={"template": "no-such-template"})
    assert r.status_code == 404
    r = await sdk.post("/v1/capsules", json={"template": "../etc"})
    assert r.status_code == 400
    r = await sdk.post("/v1/capsules", json={"vcpus": "two"})
    assert r.status_code == 400 and "vcpus" in r.json()["error"]["message"]
    r = await sdk.post(f"/v1/capsules/{capsule}/exec", json={"cmd": ""})
    assert r.status_code == 400
    r = await sdk.get(f"/v1/capsules/{capsule}/metrics?range=7m")
    assert r.status_code == 400
    assert (await sdk.delete(f"/v1/capsules/{capsule}")).status_code == 202
    for action in ("pause", "resume"):
        r = await sdk.post(f"/v1/capsules/{capsule}/{action}")
        assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"
    assert (await sdk.get(f"/v1/capsules/{capsule}")).json()["status"] in ("stopping", "stopped")
    bad = live.client(headers={"X-API-Key": "wrn_" + "0" * 32})
    assert (await bad.get("/v1/capsules")).status_code == 401
