"""Streaming multipart parsing for uploads: the ``file`` part is handed on chunk by chunk as it
arrives, so a streamed upload of any size never sits in memory or on disk here."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.errors import InvalidRequest, TooLarge

MAX_PATH_FIELD = 8192
SPOOL_IN_MEMORY = 8 * 1024 * 1024


@dataclass
class _State:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_field: bytes = b""
    part: str = ""
    path: bytearray = field(default_factory=bytearray)
    path_done: bool = False
    file_seen: bool = False
    file_done: bool = False
    pending: list[bytes] = field(default_factory=list)


def _part_name(headers: dict[bytes, bytes]) -> str:
    disposition = headers.get(b"content-disposition", b"")
    _, options = parse_options_header(disposition)
    return options.get(b"name", b"").decode("utf-8", "replace")


class MultipartUpload:
    """Feed request chunks in; read ``path`` and then the ``file`` bytes out."""

    def __init__(self, content_type: str | None, limit: int | None = None) -> None:
        kind, options = parse_options_header(content_type or "")
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InvalidRequest("body must be multipart/form-data with a boundary")
        self.limit = limit
        self.size = 0
        self.s = _State()
        self.parser = MultipartParser(boundary, callbacks=self._callbacks())  # type: ignore[arg-type]

    def _callbacks(self) -> dict[str, Any]:
        s = self.s

        def on_part_begin() -> None:
            s.headers, s.part = {}, ""

        def on_header_field(data: bytes, start: int, end: int) -> None:
            s.header_field += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            s.headers[s.header_field.lower()] = s.headers.get(s.header_field.lower(), b"") + data[start:end]

        def on_header_end() -> None:
            s.header_field = b""

        def on_headers_finished() -> None:
            s.part = _part_name(s.headers)
            if s.part == "file":
                s.file_seen = True

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if s.part == "path":
                s.path += data[start:end]
                if len(s.path) > MAX_PATH_FIELD:
                    raise InvalidRequest("path: too long")
            elif s.part == "file":
                self.size += end - start
                if self.limit is not None and self.size > self.limit:
                    raise TooLarge(f"file exceeds {self.limit} bytes; use the streaming upload")
                s.pending.append(bytes(data[start:end]))

        def on_part_end() -> None:
            if s.part == "path":
                s.path_done = True
            elif s.part == "file":
                s.file_done = True

        return {
            "on_part_begin": on_part_begin, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_part_end": on_part_end,
        }

    def feed(self, chunk: bytes) -> None:
        self.parser.write(chunk)

    def take(self) -> list[bytes]:
        out, self.s.pending = self.s.pending, []
        return out

    @property
    def path(self) -> str:
        try:
            value = self.s.path.decode()
        except UnicodeDecodeError as exc:
            raise InvalidRequest("path: not valid UTF-8") from exc
        if not value:
            raise InvalidRequest("path: field required")
        return value


async def read_whole(stream: AsyncIterator[bytes], content_type: str | None, limit: int) -> tuple[str, bytes]:
    """Non-streaming upload: the whole file, at most ``limit`` bytes."""
    upload = MultipartUpload(content_type, limit)
    parts: list[bytes] = []
    async for chunk in stream:
        upload.feed(chunk)
        parts += upload.take()
    upload.parser.finalize()
    if not upload.s.file_seen:
        raise InvalidRequest("file: field required")
    return upload.path, b"".join(parts)


async def open_streaming(stream: AsyncIterator[bytes], content_type: str | None) -> tuple[str, AsyncIterator[bytes]]:
    """Streaming upload: read until the path is known, then hand out the file bytes as they come.

    The SDK sends ``path`` first; if a client sends ``file`` first, its bytes are spooled until the
    path arrives (in memory up to 8 MiB, then on disk)."""
    upload = MultipartUpload(content_type)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - closed by the generator
    iterator = stream.__aiter__()
    finished = False
    while not upload.s.path_done:
        try:
            chunk = await iterator.__anext__()
        except StopAsyncIteration:
            finished = True
            break
        upload.feed(chunk)
        for piece in upload.take():
            spool.write(piece)
    if finished:
        upload.parser.finalize()
    path = upload.path
    if finished and not upload.s.file_seen:
        raise InvalidRequest("file: field required")

    async def body() -> AsyncIterator[bytes]:
        try:
            spool.seek(0)
            while piece := spool.read(64 * 1024):
                yield piece
            if not finished:
                async for chunk in iterator:
                    upload.feed(chunk)
                    for piece in upload.take():
                        yield piece
                upload.parser.finalize()
            if not upload.s.file_seen:
                raise InvalidRequest("file: field required")
        finally:
            spool.close()

    return path, body()
