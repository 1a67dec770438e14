"""capsule.pty through the official SDK: typed input echoed, resize, exit code, cmd/args/envs/cwd, reattach."""

from __future__ import annotations

import re
from typing import Any

from _harness import case, deadline, main
from wrenn import Capsule
from wrenn.pty import PtyEvent, PtySession

PROMPT = r"\$ $"  # bash's prompt at the end of the output so far


def _read_until(term: PtySession, pattern: str, seconds: float, what: str) -> tuple[str, list[PtyEvent]]:
    """Read events until the accumulated output matches ``pattern`` (or an exit arrives)."""
    buf = b""
    events: list[PtyEvent] = []
    rx = re.compile(pattern)
    with deadline(seconds, what):
        for ev in term:
            events.append(ev)
            if ev.type == "output" and isinstance(ev.data, bytes):
                buf += ev.data
                if rx.search(buf.decode(errors="replace")):
                    break
            if ev.type == "exit" or (ev.type == "error" and ev.fatal):
                break
    return buf.decode(errors="replace"), events


@case
def typed_echo_resize_exit(capsule_id: str) -> dict[str, Any]:
    cap = Capsule.connect(capsule_id)
    with cap.pty(cols=80, rows=24) as term:
        _, events = _read_until(term, PROMPT, 20, "first prompt")
        term.write(b"echo pty-$((6*7))\n")
        out, more = _read_until(term, r"pty-42", 20, "typed command output")
        events += more
        started = [e for e in events if e.type == "started"]
        assert started and started[0].tag and re.fullmatch(r"pty-[0-9a-f]{8}", started[0].tag), events[:3]
        assert started[0].pid and started[0].pid > 0
        assert "echo pty-$((6*7))" in out, out  # the terminal echoes what was typed
        tag = term.tag

        term.write(b"stty size\n")
        size_before, _ = _read_until(term, r"\b24 80\b", 20, "stty size")
        term.resize(120, 40)
        term.write(b"stty size; tput cols\n")
        size_after, _ = _read_until(term, r"40 120\s+120", 20, "stty size after resize")

        term.write(b"exit 3\n")
        _, tail = _read_until(term, r"(?!x)x", 20, "exit")  # never matches: read to the exit event
        exits = [e for e in tail if e.type == "exit"]
        assert exits and exits[0].exit_code == 3, [e.type for e in tail]
    return {"tag": tag, "pid": started[0].pid, "resized": "40 120" in size_after, "exit_code": exits[0].exit_code,
            "size_before": "24 80" in size_before}


@case
def immediate_input(capsule_id: str) -> dict[str, Any]:
    """The SDK's documented usage: write right after opening, before any output has been read."""
    cap = Capsule.connect(capsule_id)
    with cap.pty() as term:
        term.write(b"echo early-$((40+2))\n")
        out, _ = _read_until(term, r"early-42\r?\n", 20, "output of input sent right after start")
    return {"seen": "early-42" in out}


@case
def cmd_args_envs_cwd(capsule_id: str) -> dict[str, Any]:
    cap = Capsule.connect(capsule_id)
    with cap.pty(cmd="/bin/echo", args=["hello", "from", "echo"]) as term:
        out, events = _read_until(term, r"(?!x)x", 20, "/bin/echo")
    assert "hello from echo" in out and events[-1].type == "exit" and events[-1].exit_code == 0, out
    with cap.pty(cmd="/bin/bash", args=["-c", 'echo "[$FOO] [$(pwd)] [$TERM]"; exit 0'],
                 envs={"FOO": "bar baz"}, cwd="/tmp", cols=100, rows=30) as term:
        out2, events2 = _read_until(term, r"(?!x)x", 20, "envs/cwd")
    assert "[bar baz] [/tmp] [" in out2, out2
    return {"echo": out.strip(), "env_cwd": out2.strip()}


@case
def reattach(capsule_id: str) -> dict[str, Any]:
    cap = Capsule.connect(capsule_id)
    with cap.pty() as term:
        _read_until(term, PROMPT, 20, "first prompt")
        term.write(b"export KEEP=kept-$((1+1))\n")
        _read_until(term, PROMPT, 20, "prompt after export")
        tag = term.tag
        assert tag
        # a lost connection: close the socket first, so the SDK's automatic kill on exit cannot be sent
        term._ws.close()
    listed = [p.tag for p in cap.commands.list()]
    assert tag in listed, listed  # the PTY process survives a dropped socket
    with cap.pty_connect(tag) as again:
        again.write(b"echo $KEEP\n")  # the process exists already: input may go right away
        out, _ = _read_until(again, r"kept-2\r?\n", 20, "reattached output")
        again.write(b"exit 0\n")
        _read_until(again, r"(?!x)x", 20, "exit after reattach")
    return {"tag": tag, "reattached": "kept-2" in out}


if __name__ == "__main__":
    main()
