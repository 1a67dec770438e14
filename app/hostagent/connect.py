"""A small Connect protocol implementation (HTTP/1.1, protobuf) for hostagent.v1.

Why hand-written rather than the ``connectrpc`` package (0.13, evaluated):

* ``connectrpc`` builds on ``protobuf-py`` message classes; Google ``protobuf`` stubs only work through
  a compat codec, and its code generator is a protoc plugin with its own conventions. We would carry
  two protobuf runtimes for one service.
* Its async client is bound to ``pyqwest`` (a rustls-based HTTP client). That takes PEM bytes instead of
  an ``ssl.SSLContext``, so our TLS policy (TLS 1.3 minimum, CA-only trust, hot renewal of the CP client
  certificate) would live in a second TLS stack, and the port proxy would still need ``httpx``.
* The part of Connect we need is small and fully specified (hostagent-wire.md §3): bare unary bodies,
  5-byte envelopes, the end-of-stream JSON and the error JSON. Written here on ``httpx`` (client) and
  plain ASGI (server, served by uvicorn), it is a few hundred lines that we control byte for byte, with
  one TLS stack (OpenSSL via ``ssl``), and one extra dependency (``protobuf``).

Performance: both sides stream envelopes incrementally (no whole-body buffering for streams), the
client keeps a keep-alive pool per host, and the server runs on uvicorn's httptools/uvloop stack.

Supported: codecs ``proto`` and ``json`` (unary ``application/proto|json``, streaming
``application/connect+proto|json``), gzip request/response decompression, ``Connect-Timeout-Ms``,
HTTP status mapping (§3.6), 404 / 405 / 415. Not supported: gRPC and gRPC-Web, GET for unary calls,
bidirectional streams (the service has none). Responses are never compressed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import gzip
import json
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- errors and codes

CODE_TO_HTTP: dict[str, int] = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}

# Used only when an error response has no usable JSON body (§3.6).
_HTTP_TO_CODE: dict[int, str] = {
    400: "internal",
    401: "unauthenticated",
    403: "permission_denied",
    404: "unimplemented",
    429: "unavailable",
    502: "unavailable",
    503: "unavailable",
    504: "unavailable",
}


def code_for_http_status(status: int) -> str:
    return _HTTP_TO_CODE.get(status, "unknown")


class ConnectError(Exception):
    """An RPC error with a Connect code (lower snake case) and message."""

    def __init__(self, code: str, message: str = "", details: list[dict[str, Any]] | None = None) -> None:
        if code not in CODE_TO_HTTP:
            code = "unknown"
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.details = details or []

    @property
    def http_status(self) -> int:
        return CODE_TO_HTTP[self.code]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_dict(cls, obj: Any, fallback_code: str = "unknown") -> ConnectError:
        if not isinstance(obj, dict) or not isinstance(obj.get("code"), str):
            return cls(fallback_code, "malformed error payload")
        details = obj.get("details") if isinstance(obj.get("details"), list) else None
        return cls(obj["code"], str(obj.get("message") or ""), details)


# ---------------------------------------------------------------- envelopes

FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
_HEADER = struct.Struct(">BI")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # whole-file WriteFile/ReadFile travel as one message


def encode_envelope(payload: bytes, flags: int = 0) -> bytes:
    return _HEADER.pack(flags, len(payload)) + payload


def end_stream_payload(error: ConnectError | None = None, trailers: Mapping[str, list[str]] | None = None) -> bytes:
    obj: dict[str, Any] = {}
    if error is not None:
        obj["error"] = error.to_dict()
    if trailers:
        obj["metadata"] = {k: list(v) for k, v in trailers.items()}
    return json.dumps(obj, separators=(",", ":")).encode()


class EnvelopeReader:
    """Incremental envelope parser: feed raw bytes, collect complete (flags, payload) frames."""

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_bytes

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= 5:
            flags, size = _HEADER.unpack_from(self._buf)
            if size > self._max:
                raise ConnectError("resource_exhausted", f"message of {size} bytes exceeds the limit")
            if len(self._buf) < 5 + size:
                break
            frames.append((flags, bytes(self._buf[5 : 5 + size])))
            del self._buf[: 5 + size]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


def _payload(flags: int, payload: bytes, encoding: str | None) -> bytes:
    if not flags & FLAG_COMPRESSED:
        return payload
    if encoding != "gzip":
        raise ConnectError("internal", f"compressed envelope with encoding {encoding!r}")
    return gzip.decompress(payload)


# ---------------------------------------------------------------- codecs and methods


class Kind(enum.Enum):
    UNARY = "unary"
    SERVER_STREAM = "server_stream"
    CLIENT_STREAM = "client_stream"


@dataclass(frozen=True)
class Method:
    name: str
    kind: Kind
    request: type[Message]
    response: type[Message]


def service_methods(module: Any, service: str) -> dict[str, Method]:
    """Method table from a generated ``*_pb2`` module's service descriptor."""
    desc = module.DESCRIPTOR.services_by_name[service]
    out = {}
    for m in desc.methods:
        if m.client_streaming and m.server_streaming:
            raise ValueError(f"bidirectional method {m.name} is not supported over HTTP/1.1")
        kind = Kind.CLIENT_STREAM if m.client_streaming else Kind.SERVER_STREAM if m.server_streaming else Kind.UNARY
        out[m.name] = Method(m.name, kind, getattr(module, m.input_type.name), getattr(module, m.output_type.name))
    return out


class Codec:
    def __init__(self, name: str) -> None:
        self.name = name

    def encode(self, msg: Message) -> bytes:
        if self.name == "json":
            return json_format.MessageToJson(msg, indent=None).encode()
        return msg.SerializeToString()

    def decode(self, data: bytes, cls: type[Message]) -> Message:
        try:
            if self.name == "json":
                return json_format.Parse(data or b"{}", cls(), ignore_unknown_fields=True)
            return cls.FromString(data)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
            raise ConnectError("invalid_argument", f"cannot decode {cls.DESCRIPTOR.name}: {exc}") from exc


def parse_timeout_ms(value: str | None) -> float | None:
    """``Connect-Timeout-Ms`` → seconds; at most 10 digits, positive (§3.3)."""
    if value is None:
        return None
    if not value.isdigit() or len(value) > 10:
        raise ConnectError("invalid_argument", f"invalid Connect-Timeout-Ms {value!r}")
    return int(value) / 1000.0


# ---------------------------------------------------------------- server (ASGI)

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class RequestContext:
    """What a handler may want besides the message: request headers, deadline, response trailers."""

    method: Method
    headers: dict[str, str]
    timeout_s: float | None
    trailers: dict[str, list[str]] = field(default_factory=dict)
    # Coroutines to start once the response has been sent (e.g. Terminate's shutdown).
    after_response: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


_UNARY_TYPES = {"application/proto": "proto", "application/json": "json"}
_STREAM_TYPES = {"application/connect+proto": "proto", "application/connect+json": "json"}


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def _plain(
    send: Send, status: int, body: bytes, content_type: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    chunks = bytearray()
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise ConnectError("canceled", "client disconnected")
        chunks += event.get("body", b"")
        if len(chunks) > limit:
            raise ConnectError("resource_exhausted", "request body too large")
        if not event.get("more_body", False):
            return bytes(chunks)


async def _iter_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise ConnectError("canceled", "client disconnected")
        body = event.get("body", b"")
        if body:
            yield body
        if not event.get("more_body", False):
            return


class ConnectApp:
    """ASGI app serving one Connect service; other paths go to ``fallback`` (or 404).

    ``handlers`` maps a method name to a coroutine function:
    unary ``(req, ctx) -> resp``; server-streaming ``(req, ctx) -> AsyncIterator[resp]``;
    client-streaming ``(AsyncIterator[req], ctx) -> resp``. Raise ``ConnectError`` for RPC errors;
    any other exception becomes ``internal``.
    """

    def __init__(
        self,
        service: str,
        methods: dict[str, Method],
        handlers: Mapping[str, Callable[..., Any]],
        fallback: ASGIApp | None = None,
    ) -> None:
        self.prefix = f"/{service}/"
        self.methods = methods
        self.handlers = dict(handlers)
        self.fallback = fallback
        missing = set(methods) - set(self.handlers)
        if missing:
            raise ValueError(f"no handler for {sorted(missing)}")

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        path: str = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(self.prefix):
            return await self._rpc(scope, receive, send)
        if self.fallback is not None:
            return await self.fallback(scope, receive, send)
        if scope["type"] == "http":
            await _plain(send, 404, b"404 page not found\n", "text/plain; charset=utf-8")
        else:
            await send({"type": "websocket.close", "code": 1008})

    async def _rpc(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        method = self.methods.get(scope["path"][len(self.prefix) :])
        if method is None:
            return await _plain(send, 404, b"404 page not found\n", "text/plain; charset=utf-8")
        if scope["method"] != "POST":
            return await _plain(send, 405, b"", "text/plain", [(b"allow", b"POST")])
        headers = _headers(scope)
        ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        types = _UNARY_TYPES if method.kind is Kind.UNARY else _STREAM_TYPES
        if ctype not in types:
            accept = ", ".join(types).encode()
            return await _plain(send, 415, b"", "text/plain", [(b"accept-post", accept)])
        codec = Codec(types[ctype])
        if method.kind is Kind.UNARY:
            await self._unary(method, codec, headers, receive, send)
        else:
            await self._stream(method, codec, ctype, headers, receive, send)

    def _context(self, method: Method, headers: dict[str, str]) -> RequestContext:
        return RequestContext(method, headers, parse_timeout_ms(headers.get("connect-timeout-ms")))

    async def _unary(self, method: Method, codec: Codec, headers: dict[str, str], receive: Receive, send: Send) -> None:
        try:
            ctx = self._context(method, headers)
            body = await _read_body(receive)
            encoding = headers.get("content-encoding", "identity")
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding != "identity":
                raise ConnectError("unimplemented", f"unsupported content-encoding {encoding!r}")
            request = codec.decode(body, method.request)
            response = await _with_deadline(self.handlers[method.name](request, ctx), ctx.timeout_s)
            payload = codec.encode(response)
        except Exception as exc:  # every failure becomes a Connect error response
            err = as_connect_error(exc)
            return await _plain(send, err.http_status, json.dumps(err.to_dict()).encode(), "application/json")
        extra = [(f"trailer-{k}".encode(), v.encode()) for k, vs in ctx.trailers.items() for v in vs]
        await _plain(send, 200, payload, f"application/{codec.name}", extra)
        for hook in ctx.after_response:
            _spawn(hook())

    async def _stream(
        self, method: Method, codec: Codec, ctype: str, headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype.encode())]})
        error: ConnectError | None = None
        ctx: RequestContext | None = None
        try:
            ctx = self._context(method, headers)
            encoding = headers.get("connect-content-encoding")
            if method.kind is Kind.SERVER_STREAM:
                await self._server_stream(method, codec, ctx, encoding, receive, send)
            else:
                await self._client_stream(method, codec, ctx, encoding, receive, send)
        except Exception as exc:
            error = as_connect_error(exc)
        trailers = ctx.trailers if ctx else None
        end = encode_envelope(end_stream_payload(error, trailers), FLAG_END_STREAM)
        with contextlib.suppress(OSError):  # the client may already be gone
            await send({"type": "http.response.body", "body": end})

    async def _server_stream(
        self,
        method: Method,
        codec: Codec,
        ctx: RequestContext,
        encoding: str | None,
        receive: Receive,
        send: Send,
    ) -> None:
        frames = EnvelopeReader().feed(await _read_body(receive))
        if len(frames) != 1:
            raise ConnectError("invalid_argument", f"expected one request message, got {len(frames)}")
        request = codec.decode(_payload(*frames[0], encoding), method.request)

        async def pump() -> None:
            stream = self.handlers[method.name](request, ctx)
            try:
                async for msg in stream:
                    await send(
                        {
                            "type": "http.response.body",
                            "body": encode_envelope(codec.encode(msg)),
                            "more_body": True,
                        }
                    )
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()

        await _run_until_disconnect(pump(), receive, ctx.timeout_s)

    async def _client_stream(
        self,
        method: Method,
        codec: Codec,
        ctx: RequestContext,
        encoding: str | None,
        receive: Receive,
        send: Send,
    ) -> None:
        async def requests() -> AsyncIterator[Message]:
            reader = EnvelopeReader()
            async for chunk in _iter_body(receive):
                for flags, payload in reader.feed(chunk):
                    if flags & FLAG_END_STREAM:
                        return
                    yield codec.decode(_payload(flags, payload, encoding), method.request)
            if reader.pending:
                raise ConnectError("invalid_argument", "request body ended inside an envelope")

        response = await _with_deadline(self.handlers[method.name](requests(), ctx), ctx.timeout_s)
        await send({"type": "http.response.body", "body": encode_envelope(codec.encode(response)), "more_body": True})


_background: set[asyncio.Task[Any]] = set()


def _spawn(coro: Awaitable[Any]) -> None:
    task = asyncio.ensure_future(coro)
    _background.add(task)  # keep a reference until done
    task.add_done_callback(_background.discard)


async def _with_deadline(coro: Awaitable[Any], timeout_s: float | None) -> Any:
    if timeout_s is None:
        return await coro
    try:
        async with asyncio.timeout(timeout_s):
            return await coro
    except TimeoutError as exc:
        raise ConnectError("deadline_exceeded", "deadline exceeded") from exc


async def _run_until_disconnect(coro: Awaitable[None], receive: Receive, timeout_s: float | None) -> None:
    """Run a response pump; cancel it when the client goes away (stops forwarding, §6)."""
    pump = asyncio.ensure_future(_with_deadline(coro, timeout_s))

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            raise ConnectError("canceled", "client disconnected")
    pump.result()


def as_connect_error(exc: BaseException) -> ConnectError:
    """ConnectError as is; an exception with a known ``code`` attribute keeps it; else internal."""
    if isinstance(exc, ConnectError):
        return exc
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in CODE_TO_HTTP:
        return ConnectError(code, str(exc))
    if isinstance(exc, NotImplementedError):
        return ConnectError("unimplemented", str(exc) or "not implemented")
    log.error("unhandled error in RPC handler", exc_info=exc)
    return ConnectError("internal", str(exc) or type(exc).__name__)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# ---------------------------------------------------------------- client (httpx)

UNARY_HEADERS_TIMEOUT = 45.0  # end of request → response headers (§2.4)
OVERALL_TIMEOUT = 600.0
CONNECT_TIMEOUT = 10.0


def base_url(address: str) -> str:
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    return f"https://{address}"


def _transport_error(exc: httpx.HTTPError) -> ConnectError:
    if isinstance(exc, httpx.TimeoutException):
        return ConnectError("deadline_exceeded", f"{type(exc).__name__}: {exc}")
    return ConnectError("unavailable", f"{type(exc).__name__}: {exc}")


def _error_from_body(status: int, body: bytes) -> ConnectError:
    fallback = code_for_http_status(status)
    try:
        obj = json.loads(body)
    except ValueError:
        return ConnectError(fallback, f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
    if not isinstance(obj, dict) or "code" not in obj:
        return ConnectError(fallback, f"HTTP {status}")
    return ConnectError.from_dict(obj, fallback)


class ConnectClient:
    """Connect client for one service at one base URL over an ``httpx.AsyncClient`` (HTTP/1.1)."""

    def __init__(
        self, http: httpx.AsyncClient, url: str, service: str, error_cls: type[ConnectError] = ConnectError
    ) -> None:
        self.http = http
        self.url = url.rstrip("/")
        self.service = service
        self.error_cls = error_cls

    def _err(self, err: ConnectError) -> ConnectError:
        if isinstance(err, self.error_cls):
            return err
        return self.error_cls(err.code, err.message, err.details)

    def _headers(self, content_type: str, timeout_s: float | None) -> dict[str, str]:
        headers = {"content-type": content_type, "connect-protocol-version": "1"}
        if timeout_s is not None:
            headers["connect-timeout-ms"] = str(max(1, int(timeout_s * 1000)))
        return headers

    def _timeout(self, headers_timeout: float | None) -> httpx.Timeout:
        return httpx.Timeout(connect=CONNECT_TIMEOUT, read=headers_timeout, write=None, pool=CONNECT_TIMEOUT)

    async def unary(
        self, method: str, request: Message, response_cls: type[Message], timeout_s: float | None = None
    ) -> Any:
        """POST a bare message; raise on non-200 with the code from the JSON body."""
        headers = self._headers("application/proto", timeout_s)
        headers["accept-encoding"] = "gzip"
        overall = min(timeout_s, OVERALL_TIMEOUT) if timeout_s else OVERALL_TIMEOUT
        try:
            async with asyncio.timeout(overall):
                resp = await self.http.post(
                    f"{self.url}/{self.service}/{method}",
                    content=request.SerializeToString(),
                    headers=headers,
                    timeout=self._timeout(UNARY_HEADERS_TIMEOUT),
                )
        except TimeoutError as exc:
            raise self.error_cls("deadline_exceeded", f"{method}: no answer within {overall:g} s") from exc
        except httpx.HTTPError as exc:
            raise self._err(_transport_error(exc)) from exc
        if resp.status_code != 200:
            raise self._err(_error_from_body(resp.status_code, resp.content))
        try:
            return response_cls.FromString(resp.content)
        except DecodeError as exc:
            raise self.error_cls("internal", f"{method}: undecodable response: {exc}") from exc

    async def server_stream(
        self, method: str, request: Message, response_cls: type[Message], timeout_s: float | None = None
    ) -> AsyncIterator[Any]:
        """Yield messages as their envelopes arrive; raise the end-of-stream error, if any."""
        body = encode_envelope(request.SerializeToString())
        async for msg in self._stream(method, body, response_cls, timeout_s):
            yield msg

    async def client_stream(
        self,
        method: str,
        requests: AsyncIterator[Message],
        response_cls: type[Message],
        timeout_s: float | None = None,
    ) -> Any:
        """Send each message as an envelope (chunked body); return the single response message."""

        async def body() -> AsyncIterator[bytes]:
            async for msg in requests:
                yield encode_envelope(msg.SerializeToString())

        result = None
        async for msg in self._stream(method, body(), response_cls, timeout_s):
            if result is not None:
                raise self.error_cls("internal", f"{method}: more than one response message")
            result = msg
        if result is None:
            raise self.error_cls("internal", f"{method}: no response message")
        return result

    async def _stream(
        self,
        method: str,
        content: bytes | AsyncIterator[bytes],
        response_cls: type[Message],
        timeout_s: float | None,
    ) -> AsyncIterator[Any]:
        req = self.http.build_request(
            "POST",
            f"{self.url}/{self.service}/{method}",
            content=content,
            headers=self._headers("application/connect+proto", timeout_s),
            timeout=self._timeout(None),
        )
        try:
            resp = await self.http.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise self._err(_transport_error(exc)) from exc
        try:
            if resp.status_code != 200:
                raise self._err(_error_from_body(resp.status_code, await resp.aread()))
            async for msg in self._read_envelopes(resp, response_cls, method):
                yield msg
        except httpx.HTTPError as exc:
            raise self._err(_transport_error(exc)) from exc
        finally:
            await resp.aclose()

    async def _read_envelopes(
        self, resp: httpx.Response, response_cls: type[Message], method: str
    ) -> AsyncIterator[Any]:
        reader = EnvelopeReader()
        encoding = resp.headers.get("connect-content-encoding")
        async for chunk in resp.aiter_raw():
            for flags, payload in reader.feed(chunk):
                data = _payload(flags, payload, encoding)
                if flags & FLAG_END_STREAM:
                    self._raise_end(data)
                    return
                try:
                    yield response_cls.FromString(data)
                except DecodeError as exc:
                    raise self.error_cls("internal", f"{method}: undecodable message: {exc}") from exc
        raise self.error_cls("unavailable", f"{method}: stream ended without end-of-stream message")

    def _raise_end(self, data: bytes) -> None:
        try:
            obj = json.loads(data or b"{}")
        except ValueError as exc:
            raise self.error_cls("internal", "malformed end-of-stream message") from exc
        if isinstance(obj, dict) and obj.get("error"):
            raise self._err(ConnectError.from_dict(obj["error"]))


def b64decode_detail(value: str) -> bytes:
    """Detail values are base64 with optional padding (§3.3)."""
    return base64.b64decode(value + "=" * (-len(value) % 4))
