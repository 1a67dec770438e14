"""Host credentials: the host JWT (HS256, 7 days) and the ``X-Host-Token`` dependency."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

import jwt
from fastapi import Depends
from starlette.requests import HTTPConnection

from app.core import clock, ids
from app.core.errors import Unauthorized
from app.core.state import get_state

HOST_JWT_TTL = timedelta(days=7)
REFRESH_TTL = timedelta(days=60)
REGISTRATION_TTL = 3600


def sign_host_jwt(secret: str, host_id: uuid.UUID) -> str:
    ref = ids.encode(ids.HOST, host_id)
    now = clock.unix()
    claims = {"typ": "host", "host_id": ref, "sub": ref, "iat": now, "exp": now + int(HOST_JWT_TTL.total_seconds())}
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_host_jwt(secret: str, token: str) -> uuid.UUID:
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp", "host_id"]})
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid or expired host token") from exc
    if claims.get("typ") != "host":
        raise Unauthorized("not a host token")
    parsed = ids.try_decode(ids.HOST, str(claims.get("host_id", "")))
    if parsed is None:
        raise Unauthorized("invalid host token")
    return parsed


async def host_caller(conn: HTTPConnection) -> uuid.UUID:
    token = conn.headers.get("x-host-token")
    if not token:
        raise Unauthorized("X-Host-Token required")
    return verify_host_jwt(get_state(conn).settings.jwt_secret, token)


HostCaller = Annotated[uuid.UUID, Depends(host_caller)]
