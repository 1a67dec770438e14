"""The async client (AsyncCapsule, async code runner) for a representative subset."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from _harness import case, main
from wrenn import AsyncCapsule
from wrenn.code_runner import AsyncCapsule as AsyncCodeRunner
from wrenn.exceptions import WrennConflictError, WrennNotFoundError
from wrenn.models import Status


async def _chunks(n: int, size: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield hashlib.sha256(str(i).encode()).digest() * (size // 32)


async def _subset() -> dict[str, Any]:
    cap = await AsyncCapsule.create(wait=True)
    async with cap:
        cid = cap.capsule_id
        assert (await cap.get_info()).status == Status.running
        assert any(c.id == cid for c in await AsyncCapsule.list())

        r = await cap.commands.run('printf "%s" "$A"; exit 4', envs={"A": "async env"}, cwd="/tmp")
        assert (r.stdout, r.exit_code) == ("async env", 4), r
        # concurrent foreground commands on one capsule
        outs = await asyncio.gather(*(cap.commands.run(f"sleep 0.5; echo {i}") for i in range(5)))
        assert [o.stdout.strip() for o in outs] == [str(i) for i in range(5)]

        await cap.files.write("/tmp/async/a.txt", b"\x00async\xff")
        assert await cap.files.read_bytes("/tmp/async/a.txt") == b"\x00async\xff"
        assert await cap.files.exists("/tmp/async/a.txt") and not await cap.files.exists("/tmp/async/b.txt")
        names = [e.name for e in await cap.files.list("/tmp/async")]
        assert names == ["a.txt"], names
        digest = hashlib.sha256()
        async for c in _chunks(64, 64 * 1024):
            digest.update(c)
        await cap.files.upload_stream("/tmp/async/big.bin", _chunks(64, 64 * 1024))
        down = hashlib.sha256()
        async for c in cap.files.download_stream("/tmp/async/big.bin"):
            down.update(c)
        assert down.hexdigest() == digest.hexdigest()

        h = await cap.commands.run("sleep 60", background=True, tag="async-bg")
        assert any(p.pid == h.pid and p.tag == "async-bg" for p in await cap.commands.list())
        await cap.commands.kill(h.pid)
        await asyncio.sleep(0.5)
        assert all(p.pid != h.pid for p in await cap.commands.list())

        events = [e async for e in cap.commands.stream("echo async-stream; exit 2")]
        assert "async-stream" in "".join(getattr(e, "data", "") for e in events if e.type == "stdout")
        assert events[-1].type == "exit" and events[-1].exit_code == 2

        async with cap.pty() as term:
            out = b""
            async for ev in term:
                if ev.type == "output" and isinstance(ev.data, bytes):
                    out += ev.data
                    if out.rstrip().endswith(b"$"):
                        break
            await term.write(b"echo async-pty-$((2*3)); exit 6\n")
            code = None
            async for ev in term:
                if ev.type == "output" and isinstance(ev.data, bytes):
                    out += ev.data
                if ev.type == "exit":
                    code = ev.exit_code
                    break
            assert b"async-pty-6" in out and code == 6, (out[-300:], code)

        paused = await cap.pause(wait=True)
        assert paused.status == Status.paused
        try:
            await cap.commands.run("true")
        except WrennConflictError:
            pass
        else:
            raise AssertionError("exec in a paused capsule must be invalid_state")
        assert (await cap.resume(wait=True)).status == Status.running
        assert (await cap.commands.run("echo resumed")).stdout == "resumed\n"
        again = await AsyncCapsule.connect(cid)
        assert (await again.commands.run("echo connected")).stdout == "connected\n"
        await cap.destroy(wait=True)
        assert (await AsyncCapsule.get_info(cid)).status == Status.stopped
    try:
        await AsyncCapsule.get_info("cl-" + "1" * 25)
    except WrennNotFoundError:
        pass
    else:
        raise AssertionError("unknown capsule must be not_found")
    return {"id": cid, "stream_exit": 2, "pty_exit": 6}


@case
def subset(**_: Any) -> dict[str, Any]:
    return asyncio.run(_subset())


async def _code_runner() -> dict[str, Any]:
    cr = await AsyncCodeRunner.create(wait=True)
    async with cr:
        r = await cr.run_code("import numpy as np\nint(np.arange(10).sum())")
        assert r.error is None and r.text == "45", (r.error, r.results)
        fig = await cr.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]); plt.show()")
        assert any(res.png for res in fig.results), [res.formats() for res in fig.results]
        err = await cr.run_code("raise ValueError('boom')")
        assert err.error is not None and err.error.name == "ValueError" and err.error.value == "boom"
        return {"text": r.text, "png": True, "error": err.error.name}


@case
def code_runner(**_: Any) -> dict[str, Any]:
    return asyncio.run(_code_runner())


if __name__ == "__main__":
    main()
