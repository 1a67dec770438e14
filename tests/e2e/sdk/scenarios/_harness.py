"""Runs inside the SDK's own Python 3.13 venv (never imported by the project's pytest).

A scenario script registers cases with ``@case``; ``python <script> <case> [--capsule ID]`` runs one,
asserting internally, and prints one line ``WRENN-RESULT <json>`` that the pytest side checks again.
Configuration comes from the environment exactly as for a user: WRENN_BASE_URL, WRENN_API_KEY.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

RESULT_MARK = "WRENN-RESULT "
Case = Callable[..., dict[str, Any]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


class Deadline(Exception):
    """A blocking SDK call did not finish in time (raised from SIGALRM in the main thread)."""


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Abort a blocking call (e.g. iterating a WebSocket that never answers) after ``seconds``."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise Deadline(f"{what}: no result within {seconds}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def wait_until(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll ``pred`` until true; returns the seconds it took (AssertionError on timeout)."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not true within {timeout}s")
        time.sleep(interval)
    return round(time.monotonic() - start, 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--capsule", default=None)
    args = parser.parse_args()
    kwargs: dict[str, Any] = {}
    if args.capsule:
        kwargs["capsule_id"] = args.capsule
    started = time.monotonic()
    try:
        result = CASES[args.case](**kwargs)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)  # not sys.exit: httpx_ws sync sessions leave non-daemon threads behind
    result = dict(result or {})
    result["_seconds"] = round(time.monotonic() - started, 2)
    print(RESULT_MARK + json.dumps(result, default=str), flush=True)
    sys.stderr.flush()
    os._exit(0)
