"""Loaded at start-up of the SDK client process (this directory is on its PYTHONPATH).

Local DNS for the per-capsule proxy (contract/sdk-wire.md §3.1): a host name such as
``8888-cl-abc….127.0.0.1`` does not resolve, so resolve the part after the first dot instead
(``127.0.0.1`` / ``localhost``). Only name resolution changes: the HTTP client still sends the
original ``Host`` header, so the server routes on it as in production. Text and byte-string hosts are
both handled, which covers the synchronous client and the async stack (``loop.getaddrinfo`` calls
``socket.getaddrinfo`` in a thread).
"""

from __future__ import annotations

import re
import socket
from typing import Any

_PROXY_HOST = re.compile(r"^\d+-[A-Za-z0-9-]+\.(.+)$")
_original_getaddrinfo = socket.getaddrinfo


def _target(host: Any) -> Any:
    if isinstance(host, bytes):
        m = _PROXY_HOST.match(host.decode("ascii", "replace"))
        return m.group(1).encode() if m else host
    if isinstance(host, str):
        m = _PROXY_HOST.match(host)
        return m.group(1) if m else host
    return host


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    return _original_getaddrinfo(_target(host), *args, **kwargs)


if getattr(socket.getaddrinfo, "__name__", "") != "_getaddrinfo":
    socket.getaddrinfo = _getaddrinfo  # type: ignore[assignment]
