"""capsule.commands through the official SDK: run, envs, cwd, timeout, background, list, kill, stream, connect."""

from __future__ import annotations

import re
import time
from typing import Any

from _harness import case, deadline, main, wait_until
from wrenn import Capsule
from wrenn.commands import StreamEvent
from wrenn.exceptions import WrennError, WrennNotFoundError


@case
def run_basic(capsule_id: str) -> dict[str, Any]:
    cap = Capsule.connect(capsule_id)
    r = cap.commands.run("echo hello; echo oops >&2")
    assert (r.stdout, r.stderr, r.exit_code) == ("hello\n", "oops\n", 0), r
    failed = cap.commands.run("exit 42")  # non-zero exit is a result, not an exception
    assert failed.exit_code == 42, failed
    slow = cap.commands.run("sleep 1")
    assert slow.duration_ms is None or slow.duration_ms >= 900, slow
    binary = cap.commands.run("printf 'caf\\303\\251 \\377'")  # invalid UTF-8 travels base64-encoded
    assert binary.stdout.startswith("café "), binary
    no_cd = cap.commands.run("cd /tmp && pwd").stdout, cap.commands.run("pwd").stdout
    assert no_cd == ("/tmp\n", "/home/wrenn-user\n"), no_cd
    return {"exit_code": failed.exit_code, "duration_ms": slow.duration_ms}


@case
def envs_and_cwd(capsule_id: str) -> dict[str, Any]:
    cap = Capsule.connect(capsule_id)
    tricky = "a b&c|d;e $HOME `x`"
    r = cap.commands.run('printf "%s" "$X"', envs={"X": tricky})
    assert r.stdout == tricky, r
    assert cap.commands.run('printf "%s" "${X-unset}"').stdout == "unset"  # nothing leaks between calls
    assert cap.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    cap.commands.run("mkdir -p rel/sub")
    rel = cap.commands.run("pwd", cwd="rel/sub").stdout  # relative to the home directory
    assert rel == "/home/wrenn-user/rel/sub\n", rel
    home = cap.commands.run('echo "$HOME $USER"; for c in git bash sudo; do command -v $c; done').stdout.split()
    assert home[:2] == ["/home/wrenn-user", "wrenn-user"] and len(home) == 5, home
    try:
        cap.commands.run("pwd", cwd="/does/not/exist")
    except WrennError as exc:
        bad_cwd = exc.code
    else:
        raise AssertionError("a nonexistent cwd must be an error")
    return {"cwd_relative": rel.strip(), "bad_cwd_code": bad_cwd}


@case
def timeout(capsule_id: str) -> dict[str, Any]:
    cap = Capsule.connect(capsule_id)
    t0 = time.monotonic()
    try:
        cap.commands.run("sleep 20", timeout=2)
    except WrennError as exc:
        code = exc.code
    else:
        raise AssertionError("sleep 20 with timeout=2 must raise")
    elapsed = time.monotonic() - t0
    assert elapsed < 12, elapsed  # before the client's own timeout (T + 10 s)
    assert cap.commands.run("echo alive").stdout == "alive\n"
    return {"code": code, "seconds": round(elapsed, 2)}


@case
def background_list_kill(capsule_id: str) -> dict[str, Any]:
    cap = Capsule.connect(capsule_id)
    t0 = time.monotonic()
    h = cap.commands.run('echo "$MARK" > bgout.txt; pwd >> bgout.txt; exec sleep 60', background=True,
                         tag="sleeper", envs={"MARK": "bg-env"}, cwd="/tmp")
    assert time.monotonic() - t0 < 5 and h.pid > 0 and h.tag == "sleeper", h
    time.sleep(0.5)
    procs = cap.commands.list()
    mine = [p for p in procs if p.pid == h.pid]
    assert mine and mine[0].tag == "sleeper", procs
    assert cap.files.read("/tmp/bgout.txt") == "bg-env\n/tmp\n"

    auto = cap.commands.run("sleep 60", background=True)
    assert re.fullmatch(r"proc-[0-9a-f]{8}", auto.tag), auto.tag

    cap.commands.kill(h.pid)
    wait_until(lambda: all(p.pid != h.pid for p in cap.commands.list()), 5, "killed pid leaves the list")
    cap.commands.kill(auto.pid)
    wait_until(lambda: all(p.pid != auto.pid for p in cap.commands.list()), 5, "second pid leaves the list")
    try:
        cap.commands.kill(999_999)
    except WrennNotFoundError as exc:
        unknown = exc.code
    else:
        raise AssertionError("killing an unknown pid must be not_found")
    return {"pid": h.pid, "auto_tag": auto.tag, "unknown_kill_code": unknown}


def _collect(events: Any, seconds: float, what: str) -> list[StreamEvent]:
    out: list[StreamEvent] = []
    with deadline(seconds, what):
        for ev in events:
            out.append(ev)
    return out


@case
def stream(capsule_id: str) -> dict[str, Any]:
    cap = Capsule.connect(capsule_id)
    evs = _collect(cap.commands.stream("echo streamed; echo to-stderr >&2; exit 5"), 20, "exec stream")
    kinds = [e.type for e in evs]
    stdout = "".join(e.data for e in evs if e.type == "stdout")
    stderr = "".join(e.data for e in evs if e.type == "stderr")
    assert "streamed" in stdout and "to-stderr" in stderr, kinds
    assert kinds[-1] == "exit" and evs[-1].exit_code == 5, kinds
    starts = [e for e in evs if e.type == "start"]
    assert all(e.pid > 0 for e in starts)

    lines = _collect(cap.commands.stream("for i in 1 2 3; do echo line$i; sleep 0.2; done"), 20, "loop")
    text = "".join(e.data for e in lines if e.type == "stdout")
    assert text.split() == ["line1", "line2", "line3"] and lines[-1].exit_code == 0, text

    args = _collect(cap.commands.stream("/usr/bin/env", args=["python3", "-c", "print(6*7)"]), 20, "args form")
    assert "".join(e.data for e in args if e.type == "stdout").strip() == "42"
    return {"kinds": kinds, "exit_code": evs[-1].exit_code}


@case
def connect_background(capsule_id: str) -> dict[str, Any]:
    cap = Capsule.connect(capsule_id)
    h = cap.commands.run("sleep 1; for i in 1 2 3 4; do echo tick$i; sleep 0.3; done; exit 7", background=True,
                         tag="ticker")
    evs = _collect(cap.commands.connect(h.pid), 30, "process connect")
    text = "".join(e.data for e in evs if e.type == "stdout")
    assert text.split() == ["tick1", "tick2", "tick3", "tick4"], [(e.type, getattr(e, "data", "")) for e in evs]
    assert evs[-1].type == "exit" and evs[-1].exit_code == 7, evs[-1].type

    # connecting to a finished process must not raise (upgrade, then exit/error/close)
    late = _collect(cap.commands.connect(h.pid), 15, "connect to finished process")
    assert all(e.type in ("start", "stdout", "stderr", "exit", "error") for e in late)
    return {"ticks": text.split(), "exit_code": evs[-1].exit_code, "late_events": [e.type for e in late]}


@case
def port_proxy(capsule_id: str) -> dict[str, Any]:
    """get_url(port): a server started with commands.run(background=True) is reachable through the proxy."""
    import httpx

    cap = Capsule.connect(capsule_id)
    key = cap._client._api_key
    cap.files.write("/tmp/www/index.txt", "served from the capsule")
    h = cap.commands.run("exec python3 -m http.server 8000 --bind 0.0.0.0", background=True, cwd="/tmp/www",
                         tag="web")
    url = cap.get_url(8000)
    assert url == f"http://8000-{capsule_id}." + cap._client._base_url.split("://", 1)[1].rstrip("/"), url
    got: dict[str, Any] = {}

    def fetch() -> bool:
        try:
            r = httpx.get(f"{url}/index.txt", headers={"X-API-Key": key}, timeout=5)
        except httpx.HTTPError:
            return False
        got["status"], got["body"] = r.status_code, r.text
        return r.status_code == 200

    waited = wait_until(fetch, 15, "http.server reachable through the proxy", interval=0.2)
    assert got["body"] == "served from the capsule", got
    closed = httpx.get(cap.get_url(8001), headers={"X-API-Key": key}, timeout=10).status_code
    assert closed in (502, 503), closed  # nothing listening: 5xx (the code runner retries on those)
    bad_key = httpx.get(f"{url}/index.txt", headers={"X-API-Key": "wrn_" + "0" * 32}, timeout=10).status_code
    cap.commands.kill(h.pid)
    return {"url": url, "waited": waited, "closed_port_status": closed, "bad_key_status": bad_key}


if __name__ == "__main__":
    main()
