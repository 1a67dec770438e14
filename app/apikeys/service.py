"""Team API keys: ``wrn_`` + 32 hex, stored as SHA-256, looked up through a short Redis cache."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.models import User
from app.apikeys.models import ApiKey
from app.audit import service as audit
from app.auth.identity import Identity
from app.core import clock, ids
from app.core.security import sha256_hex, token_hex
from app.core.state import AppState

PREFIX = "wrn_"
DISPLAY_PREFIX_LEN = 10
CACHE_TTL = 300
LAST_USED_EVERY = 60


def _cache_key(key_hash: str) -> str:
    return f"wrenn:apikey:{key_hash}"


def looks_like_key(raw: str) -> bool:
    body = raw[len(PREFIX) :]
    return raw.startswith(PREFIX) and len(body) == 32 and all(c in "0123456789abcdef" for c in body)


def to_json(key: ApiKey, creator_email: str | None = None, plaintext: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ids.encode(ids.API_KEY, key.id),
        "team_id": ids.encode(ids.TEAM, key.team_id),
        "name": key.name,
        "key_prefix": key.key_prefix,
        "created_by": ids.encode(ids.USER, key.created_by) if key.created_by else None,
        "created_at": clock.iso(key.created_at),
        "last_used": clock.iso(key.last_used),
    }
    if creator_email is not None:
        body["creator_email"] = creator_email
    if plaintext is not None:
        body["key"] = plaintext
    return body


async def create(state: AppState, who: Identity, team_id: uuid.UUID, name: str) -> dict[str, Any]:
    plaintext = PREFIX + token_hex(16)
    async with state.db() as db, db.begin():
        key = ApiKey(
            id=ids.new_uuid(),
            team_id=team_id,
            name=name,
            key_hash=sha256_hex(plaintext),
            key_prefix=plaintext[:DISPLAY_PREFIX_LEN],
            created_by=who.user_id,
            created_at=clock.now(),
        )
        db.add(key)
        await audit.record(db, who, team_id, "api_key", ids.encode(ids.API_KEY, key.id), "create",
                           metadata={"name": name})
    return to_json(key, plaintext=plaintext)


async def list_for_team(state: AppState, team_id: uuid.UUID) -> list[dict[str, Any]]:
    async with state.db() as db:
        rows = await db.execute(
            select(ApiKey, User.email)
            .outerjoin(User, User.id == ApiKey.created_by)
            .where(ApiKey.team_id == team_id)
            .order_by(ApiKey.created_at.desc())
        )
        return [to_json(key, creator_email=email or "") for key, email in rows.all()]


async def delete_key(state: AppState, who: Identity, team_id: uuid.UUID, key_id: uuid.UUID) -> None:
    async with state.db() as db, db.begin():
        key = await db.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.team_id == team_id))
        if key is None:
            return  # idempotent, and silent about other teams' keys
        await db.delete(key)
        await audit.record(db, who, team_id, "api_key", ids.encode(ids.API_KEY, key_id), "delete",
                           metadata={"name": key.name})
    await state.redis.delete(_cache_key(key.key_hash))


async def delete_where(state: AppState, db: AsyncSession, *conditions: Any) -> None:
    """Bulk delete (user disabled/deleted, team torn down) inside the caller's transaction."""
    hashes = list(await db.scalars(select(ApiKey.key_hash).where(*conditions)))
    await db.execute(delete(ApiKey).where(*conditions))
    if hashes:
        await state.redis.delete(*[_cache_key(h) for h in hashes])


async def authenticate(state: AppState, raw: str) -> Identity | None:
    if not looks_like_key(raw):
        return None
    key_hash = sha256_hex(raw)
    cached = await state.redis.get(_cache_key(key_hash))
    if cached:
        data = orjson.loads(cached)
    else:
        async with state.db() as db:
            key = await db.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
        if key is None:
            return None
        data = {"id": str(key.id), "team_id": str(key.team_id), "name": key.name}
        await state.redis.set(_cache_key(key_hash), orjson.dumps(data), ex=CACHE_TTL)
    key_id = uuid.UUID(data["id"])
    await _touch(state, key_id)
    return Identity(kind="api_key", team_id=uuid.UUID(data["team_id"]), api_key_id=key_id,
                    api_key_name=data["name"])


async def _touch(state: AppState, key_id: uuid.UUID) -> None:
    """Record last_used at most once a minute per key: one Redis SET NX instead of a DB write each time."""
    if await state.redis.set(f"wrenn:apikey_touch:{key_id}", "1", nx=True, ex=LAST_USED_EVERY):
        async with state.db() as db, db.begin():
            await db.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used=clock.now()))
