"""capsule.files through the official SDK: every operation, exists, binary, 50 MB streamed round trip."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from _harness import case, main
from wrenn import Capsule
from wrenn.exceptions import WrennNotFoundError

HOME = "/home/wrenn-user"
MB = 1024 * 1024


@case
def write_read_list(capsule_id: str) -> dict[str, Any]:
    cap = Capsule.connect(capsule_id)
    cap.files.write(f"{HOME}/hello.txt", "héllo wörld\n")
    assert cap.files.read(f"{HOME}/hello.txt") == "héllo wörld\n"
    assert cap.files.read_bytes(f"{HOME}/hello.txt") == "héllo wörld\n".encode()
    cap.files.write(f"{HOME}/hello.txt", "replaced")  # overwrite
    assert cap.files.read(f"{HOME}/hello.txt") == "replaced"
    cap.files.write(f"{HOME}/a/b/c/deep.txt", "deep")  # parents created
    assert cap.files.read(f"{HOME}/a/b/c/deep.txt") == "deep"
    cap.files.write(f"{HOME}/.hidden", "dot")
    # the SDK's files and exec see the same filesystem, with the default user as owner
    assert cap.commands.run("cat a/b/c/deep.txt; stat -c %U hello.txt").stdout == "deepwrenn-user\n"

    entries = cap.files.list(HOME)
    by_name = {e.name: e for e in entries}
    assert {"hello.txt", "a", ".hidden"} <= set(by_name), sorted(by_name)
    f, d = by_name["hello.txt"], by_name["a"]
    assert str(f.type) == "file" and f.size == 8 and f.path == f"{HOME}/hello.txt", f
    assert str(d.type) == "directory", d
    assert isinstance(f.modified_at, int) and f.modified_at > 1_600_000_000, f
    assert f.owner == "wrenn-user" and f.permissions and f.permissions.startswith("-"), f
    depth2 = cap.files.list(HOME, depth=2)
    assert len(depth2) > len(entries) and any(e.path == f"{HOME}/a/b" for e in depth2)
    assert not any(e.path == f"{HOME}/a/b/c" for e in depth2)
    deeper = cap.files.list(HOME, depth=4)  # a(1)/b(2)/c(3)/deep.txt(4)
    assert any(e.path == f"{HOME}/a/b/c/deep.txt" for e in deeper), sorted(e.path or "" for e in deeper)
    try:
        cap.files.list(f"{HOME}/no-such-dir")
    except WrennNotFoundError as exc:
        missing = exc.code
    else:
        raise AssertionError("listing a missing directory must be not_found")
    try:
        cap.files.read(f"{HOME}/no-such-file")
    except WrennNotFoundError:
        pass
    else:
        raise AssertionError("reading a missing file must be not_found")
    return {"entries": len(entries), "depth2": len(depth2), "depth4": len(deeper), "missing_code": missing,
            "types": sorted({str(e.type) for e in deeper})}


@case
def exists_mkdir_remove(capsule_id: str) -> dict[str, Any]:
    cap = Capsule.connect(capsule_id)
    cap.files.write(f"{HOME}/ex/file.txt", "x")
    checks = {
        "file": cap.files.exists(f"{HOME}/ex/file.txt"),
        "dir": cap.files.exists(f"{HOME}/ex"),
        "missing_file": cap.files.exists(f"{HOME}/ex/nope.txt"),
        "missing_parent": cap.files.exists(f"{HOME}/nope/nope.txt"),
    }
    assert checks == {"file": True, "dir": True, "missing_file": False, "missing_parent": False}, checks

    entry = cap.files.make_dir(f"{HOME}/made/x/y")  # parents too
    assert str(entry.type) == "directory" and entry.name == "y" and entry.path == f"{HOME}/made/x/y", entry
    again = cap.files.make_dir(f"{HOME}/made/x/y")  # idempotent from the user's view
    assert again.path == entry.path and str(again.type) == "directory"
    cap.files.write(f"{HOME}/made/x/y/f.txt", "f")

    cap.files.remove(f"{HOME}/made")  # recursive
    assert not cap.files.exists(f"{HOME}/made")
    cap.files.remove(f"{HOME}/ex/file.txt")
    assert not cap.files.exists(f"{HOME}/ex/file.txt") and cap.files.exists(f"{HOME}/ex")
    try:
        cap.files.remove(f"{HOME}/made")
    except WrennNotFoundError:
        removed_twice = "not_found"
    else:
        removed_twice = "ok"
    return {**checks, "mkdir_entry": entry.path, "remove_missing": removed_twice}


@case
def binary_roundtrip(capsule_id: str) -> dict[str, Any]:
    cap = Capsule.connect(capsule_id)
    small = b"\x00\x01\x02\xff"
    cap.files.write("/tmp/small.bin", small)
    assert cap.files.read_bytes("/tmp/small.bin") == small
    every = bytes(range(256)) * 4096  # 1 MiB with every byte value, incl. \r\n and NUL
    cap.files.write("/tmp/every.bin", every)
    back = cap.files.read_bytes("/tmp/every.bin")
    assert back == every, (len(back), len(every))
    inside = cap.commands.run("sha256sum /tmp/every.bin").stdout.split()[0]
    assert inside == hashlib.sha256(every).hexdigest()

    cap.files.upload_stream("/tmp/chunks.txt", iter([b"chunk1", b"chunk2", b"chunk3"]))
    assert cap.files.read("/tmp/chunks.txt") == "chunk1chunk2chunk3"
    return {"small": len(small), "every": len(every), "sha256": inside}


def _deterministic(total: int, chunk: int, digest: Any) -> Iterator[bytes]:
    """``total`` bytes from a counter-mode SHA-256 stream (reproducible, incompressible)."""
    counter = 0
    sent = 0
    while sent < total:
        block = bytearray()
        while len(block) < chunk:
            block += hashlib.sha256(counter.to_bytes(8, "big")).digest() * 64  # 2 KiB per counter
            counter += 1
        piece = bytes(block[: min(chunk, total - sent)])
        digest.update(piece)
        sent += len(piece)
        yield piece


@case
def stream_50mb(capsule_id: str) -> dict[str, Any]:
    import time

    cap = Capsule.connect(capsule_id)
    size = 50 * MB
    up_digest = hashlib.sha256()
    t0 = time.monotonic()
    cap.files.upload_stream("/tmp/big.bin", _deterministic(size, 256 * 1024, up_digest))
    up_s = time.monotonic() - t0
    expected = up_digest.hexdigest()
    inside = cap.commands.run("sha256sum /tmp/big.bin; stat -c %s /tmp/big.bin").stdout.split()
    assert inside[0] == expected and int(inside[2]) == size, inside

    down_digest = hashlib.sha256()
    got = 0
    chunks = 0
    t0 = time.monotonic()
    for chunk in cap.files.download_stream("/tmp/big.bin"):
        down_digest.update(chunk)
        got += len(chunk)
        chunks += 1
    down_s = time.monotonic() - t0
    assert got == size and down_digest.hexdigest() == expected, (got, down_digest.hexdigest(), expected)
    assert chunks > 1  # streamed, not one buffered body
    cap.files.remove("/tmp/big.bin")
    return {"sha256": expected, "bytes": got, "upload_s": round(up_s, 2), "download_s": round(down_s, 2),
            "download_chunks": chunks}


if __name__ == "__main__":
    main()
