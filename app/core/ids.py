"""External IDs: ``prefix + base36(uuid)`` padded to 25 characters (control-plane.md §2.1)."""

from __future__ import annotations

import secrets
import uuid

from app.core.errors import InvalidRequest

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_BODY_LEN = 25
_MAX = 1 << 128
ZERO_UUID = uuid.UUID(int=0)

CAPSULE = "cl-"
USER = "usr-"
TEAM = "team-"
API_KEY = "key-"
HOST = "host-"
HOST_TOKEN = "htok-"
HOST_REFRESH = "hrt-"
AUDIT = "log-"
BUILD = "bld-"
CHANNEL = "ch-"


def encode(prefix: str, value: uuid.UUID) -> str:
    n = value.int
    digits = []
    while n:
        n, rem = divmod(n, 36)
        digits.append(_ALPHABET[rem])
    body = "".join(reversed(digits)).rjust(_BODY_LEN, "0")
    return prefix + body


def decode(prefix: str, text: str, what: str = "id") -> uuid.UUID:
    """Parse a prefixed ID; anything malformed is a 400 ``invalid_request``."""
    if not isinstance(text, str) or not text.startswith(prefix):
        raise InvalidRequest(f"invalid {what}: {text!r}")
    body = text[len(prefix) :]
    if len(body) != _BODY_LEN or any(c not in _ALPHABET for c in body):
        raise InvalidRequest(f"invalid {what}: {text!r}")
    n = int(body, 36)
    if n >= _MAX:
        raise InvalidRequest(f"invalid {what}: {text!r}")
    return uuid.UUID(int=n)


def try_decode(prefix: str, text: str) -> uuid.UUID | None:
    try:
        return decode(prefix, text)
    except InvalidRequest:
        return None


def new_uuid() -> uuid.UUID:
    return uuid.uuid4()


def new_id(prefix: str) -> tuple[uuid.UUID, str]:
    value = new_uuid()
    return value, encode(prefix, value)


def random_hex(nbytes: int) -> str:
    return secrets.token_hex(nbytes)


def team_slug() -> str:
    return f"{secrets.token_hex(3)}-{secrets.token_hex(3)}"
