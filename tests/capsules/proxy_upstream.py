"""A tiny HTTP + WebSocket server, standard library only, that the proxy tests copy into a capsule.

Usage inside the capsule: ``python3 proxy_upstream.py PORT``.

HTTP: ``/headers`` (the request headers as JSON), ``/echo`` (the body back; chunked bodies understood),
``/stream`` (three chunks 0.4 s apart), ``/redirect`` (302 to ``/landing``), ``/redirect-abs`` (302 to an
absolute URL on the capsule's own address). WebSocket on any path: text and binary messages are echoed;
the text ``close-4001`` makes the server close with code 4001; the handshake picks ``echo.v1`` if offered.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import sys

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    request_line = (await reader.readline()).decode("latin-1").strip()
    headers: dict[str, str] = {}
    while True:
        line = (await reader.readline()).decode("latin-1")
        if line in ("\r\n", "\n", ""):
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    method, path, _ = request_line.split(" ", 2)
    return method, path, headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = b""
        while size := int((await reader.readline()).strip(), 16):
            out += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
        return out
    length = int(headers.get("content-length") or 0)
    return await reader.readexactly(length) if length else b""


def response(status: str, body: bytes, extra: dict[str, str] | None = None, ctype: str = "text/plain") -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Type: {ctype}", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def http(writer: asyncio.StreamWriter, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
    own = writer.get_extra_info("sockname")
    if path.startswith("/headers"):
        seen = json.dumps({"path": path, "headers": headers}).encode()
        writer.write(response("200 OK", seen, ctype="application/json"))
    elif path.startswith("/echo"):
        writer.write(response("200 OK", body, {"X-Method": method}))
    elif path.startswith("/redirect-abs"):
        writer.write(response("302 Found", b"", {"Location": f"http://{own[0]}:{own[1]}/abs/path?q=1"}))
    elif path.startswith("/redirect"):
        writer.write(response("302 Found", b"", {"Location": "/landing"}))
    elif path.startswith("/stream"):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n")
        for i in range(3):
            chunk = f"part{i}\n".encode()
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.4)
        writer.write(b"0\r\n\r\n")
    else:
        writer.write(response("404 Not Found", b"nothing here"))
    await writer.drain()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(length)))
    return b0 & 0x0F, data


def frame(opcode: int, data: bytes) -> bytes:
    n = len(data)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + data


async def websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]) -> None:
    accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + GUID).encode()).digest()).decode()
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept}"]
    if "echo.v1" in [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]:
        lines.append("Sec-WebSocket-Protocol: echo.v1")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    while True:
        opcode, data = await read_frame(reader)
        if opcode == 0x8:
            writer.write(frame(0x8, data[:2] or struct.pack("!H", 1000)))
            break
        if opcode == 0x9:
            writer.write(frame(0xA, data))
        elif opcode == 0x1 and data == b"close-4001":
            writer.write(frame(0x8, struct.pack("!H", 4001) + b"bye"))
            break
        elif opcode in (0x1, 0x2):
            writer.write(frame(opcode, data))
        await writer.drain()
    await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        method, path, headers = await read_head(reader)
        if headers.get("upgrade", "").lower() == "websocket":
            await websocket(reader, writer, headers)
        else:
            await http(writer, method, path, headers, await read_body(reader, headers))
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "0.0.0.0", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
