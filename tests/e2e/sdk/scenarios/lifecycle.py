"""Capsule lifecycle through the official SDK: create(wait), list, get, connect, pause/resume, destroy."""

from __future__ import annotations

import time
from typing import Any

from _harness import case, main, wait_until
from wrenn import Capsule, WrennClient
from wrenn.exceptions import WrennConflictError, WrennError, WrennNotFoundError
from wrenn.models import Status


def _aware(value: Any) -> bool:
    return value is not None and value.tzinfo is not None


@case
def create(**_: Any) -> dict[str, Any]:
    """A running capsule for other scenario files (destroyed by ``destroy``)."""
    cap = Capsule(wait=True)
    info = cap.get_info()
    assert info.status == Status.running, info
    return {"id": cap.capsule_id}


@case
def destroy(capsule_id: str) -> dict[str, Any]:
    Capsule.destroy(capsule_id, wait=True)
    return {"status": str(Capsule.get_info(capsule_id).status)}


@case
def create_list_get_connect(**_: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    cap = Capsule(wait=True)
    ready_s = round(time.monotonic() - t0, 2)
    try:
        cid = cap.capsule_id
        assert cid.startswith("cl-") and cid == cid.lower(), cid
        info = cap.get_info()
        assert info.status == Status.running and info.id == cid
        assert info.template == "minimal" and info.vcpus == 1 and info.memory_mb == 512, info
        assert _aware(info.created_at) and _aware(info.last_updated), info
        assert cap.is_running()

        listed = Capsule.list()
        assert any(c.id == cid and c.status == Status.running for c in listed), [c.id for c in listed]
        with WrennClient() as client:
            assert client.capsules.get(cid).id == cid

        other = Capsule.connect(cid)  # running: plain bind, no resume
        out = other.commands.run("echo connected; id -un; pwd")
        assert out.exit_code == 0 and out.stdout.split() == ["connected", "wrenn-user", "/home/wrenn-user"], out

        try:
            Capsule.get_info("cl-" + "0" * 25)
        except WrennNotFoundError as exc:
            missing = exc.code
        else:
            raise AssertionError("unknown capsule should be 404 not_found")
        return {"id": cid, "ready_seconds": ready_s, "listed": len(listed), "missing_code": missing,
                "whoami": out.stdout.split()[1]}
    finally:
        cap.destroy()


@case
def pause_resume(**_: Any) -> dict[str, Any]:
    cap = Capsule(wait=True)
    try:
        cid = cap.capsule_id
        # a counter that keeps its state across pause/resume (pause is a freeze, not a restart)
        h = cap.commands.run("i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done",
                             background=True, tag="counter")
        wait_until(lambda: cap.commands.run("cat /tmp/counter 2>/dev/null || echo 0").stdout.strip() not in
                   ("", "0"), 10, "counter running")
        paused = cap.pause(wait=True)
        assert paused.status == Status.paused, paused
        assert Capsule.get_info(cid).status == Status.paused
        frozen = None
        try:
            cap.commands.run("echo should-not-run")
        except WrennConflictError as exc:
            frozen = exc.code
        assert frozen == "invalid_state", frozen

        resumed = cap.resume(wait=True)
        assert resumed.status == Status.running, resumed
        first = int(cap.commands.run("cat /tmp/counter").stdout)
        wait_until(lambda: int(cap.commands.run("cat /tmp/counter").stdout) > first, 10, "counter advances")
        assert any(p.pid == h.pid for p in cap.commands.list()), "background process survived pause"

        # connect() to a paused capsule resumes it
        cap.pause(wait=True)
        again = Capsule.connect(cid)
        assert again.get_info().status == Status.running
        assert again.commands.run("echo back").stdout == "back\n"
        return {"id": cid, "paused_error_code": frozen, "counter_after_resume": first}
    finally:
        cap.destroy()


@case
def destroy_then_get(**_: Any) -> dict[str, Any]:
    cap = Capsule(wait=True)
    cid = cap.capsule_id
    cap.destroy(wait=True)
    info = Capsule.get_info(cid)  # stays readable after destroy: never 404
    assert info.status == Status.stopped, info
    Capsule.destroy(cid)  # idempotent (the SDK may retry a DELETE)
    after = Capsule.get_info(cid)
    assert after.status == Status.stopped
    try:
        cap.commands.run("echo gone")
    except WrennError as exc:
        run_error = exc.code
    else:
        raise AssertionError("exec in a destroyed capsule must fail")

    with Capsule(wait=True) as ctx:  # leaving the block destroys it (without waiting)
        ctx_id = ctx.capsule_id
    wait_until(lambda: Capsule.get_info(ctx_id).status in (Status.stopping, Status.stopped), 5, "ctx destroyed")
    wait_until(lambda: Capsule.get_info(ctx_id).status == Status.stopped, 30, "ctx stopped")
    return {"status_after_destroy": str(info.status), "run_error_code": run_error}


if __name__ == "__main__":
    main()
