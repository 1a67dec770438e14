"""Notification channels of a team (control-plane.md §14): CRUD, config rotation, test delivery.

Config values are encrypted at rest (crypto.py) and never returned; the webhook secret is returned in the
response that created it (create, or a rotation that generated a new one — §22 row 28)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.audit import service as audit
from app.auth.identity import Identity
from app.channels import crypto
from app.channels.models import Channel
from app.channels.providers import DeliveryError, Target, check_provider, deliver, validate_config
from app.core import clock, ids, validation
from app.core.errors import ApiError, Conflict, InvalidRequest, NotFound
from app.core.state import AppState
from app.events.service import CHANNEL_EVENTS


def channel_json(channel: Channel, secret: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ids.encode(ids.CHANNEL, channel.id),
        "team_id": ids.encode(ids.TEAM, channel.team_id),
        "name": channel.name,
        "provider": channel.provider,
        "events": list(channel.event_types),
        "created_at": clock.iso(channel.created_at),
        "updated_at": clock.iso(channel.updated_at),
    }
    if secret is not None:
        body["secret"] = secret
    return body


def clean_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidRequest("name: must be a string")
    return validation.safe_name(name.strip().lower().replace(" ", "-"), "name")


def clean_events(events: object) -> list[str]:
    if not isinstance(events, list) or not events:
        raise InvalidRequest("events: at least one event is required")
    out: list[str] = []
    for i, name in enumerate(events):
        if name not in CHANNEL_EVENTS:
            raise InvalidRequest(f"events[{i}]: must be one of {', '.join(CHANNEL_EVENTS)}")
        if name not in out:
            out.append(name)
    return out


async def _config(state: AppState, provider: str, config: object) -> tuple[dict[str, str], str | None]:
    return await validate_config(provider, config, allow_private=state.settings.channels_allow_private)


def _ref(channel: Channel) -> str:
    return ids.encode(ids.CHANNEL, channel.id)


async def create(
    state: AppState, who: Identity, team_id: uuid.UUID, name: object, provider: object, config: object,
    events: object,
) -> dict[str, Any]:
    clean = clean_name(name)
    prov = check_provider(provider)
    event_types = clean_events(events)
    cfg, generated = await _config(state, prov, config)
    now = clock.now()
    channel = Channel(id=ids.new_uuid(), team_id=team_id, name=clean, provider=prov,
                      config=crypto.encrypt_config(state.settings.encryption_key, cfg), event_types=event_types,
                      created_at=now, updated_at=now)
    try:
        async with state.db() as db, db.begin():
            db.add(channel)
            await db.flush()
            await audit.record(db, who, team_id, "channel", _ref(channel), "create",
                               metadata={"name": clean, "provider": prov})
    except IntegrityError as exc:
        raise Conflict(f"name: a channel named {clean!r} already exists in this team") from exc
    # The secret is shown once: the one generated here, or the one the caller chose.
    return channel_json(channel, secret=generated or (cfg.get("secret") if prov == "webhook" else None))


async def _load(db: Any, team_id: uuid.UUID, channel_ref: str, *, lock: bool = False) -> Channel:
    channel_id = ids.try_decode(ids.CHANNEL, channel_ref)
    query = select(Channel).where(Channel.id == channel_id, Channel.team_id == team_id)
    channel = await db.scalar(query.with_for_update() if lock else query) if channel_id else None
    if channel is None:
        raise NotFound("channel not found")
    return channel


async def list_channels(state: AppState, team_id: uuid.UUID) -> list[dict[str, Any]]:
    async with state.db() as db:
        rows = await db.scalars(select(Channel).where(Channel.team_id == team_id)
                                .order_by(Channel.created_at, Channel.id))
        return [channel_json(c) for c in rows]


async def get(state: AppState, team_id: uuid.UUID, channel_ref: str) -> dict[str, Any]:
    async with state.db() as db:
        return channel_json(await _load(db, team_id, channel_ref))


async def update(
    state: AppState, who: Identity, team_id: uuid.UUID, channel_ref: str, name: object, events: object
) -> dict[str, Any]:
    clean = clean_name(name)
    event_types = clean_events(events)
    try:
        async with state.db() as db, db.begin():
            channel = await _load(db, team_id, channel_ref, lock=True)
            old_name = channel.name
            channel.name, channel.event_types, channel.updated_at = clean, event_types, clock.now()
            await db.flush()
            await audit.record(db, who, team_id, "channel", _ref(channel), "update", status="info",
                               metadata={"name": clean, "old_name": old_name, "events": ",".join(event_types)})
    except IntegrityError as exc:
        raise Conflict(f"name: a channel named {clean!r} already exists in this team") from exc
    return channel_json(channel)


async def rotate_config(
    state: AppState, who: Identity, team_id: uuid.UUID, channel_ref: str, config: object
) -> dict[str, Any]:
    async with state.db() as db:
        provider = (await _load(db, team_id, channel_ref)).provider
    cfg, generated = await _config(state, provider, config)
    async with state.db() as db, db.begin():
        channel = await _load(db, team_id, channel_ref, lock=True)
        channel.config = crypto.encrypt_config(state.settings.encryption_key, cfg)
        channel.updated_at = clock.now()
        await audit.record(db, who, team_id, "channel", _ref(channel), "rotate_config", status="info",
                           metadata={"name": channel.name, "secret_generated": str(generated is not None).lower()})
    return channel_json(channel, secret=generated)


async def delete(state: AppState, who: Identity, team_id: uuid.UUID, channel_ref: str) -> None:
    async with state.db() as db, db.begin():
        channel = await _load(db, team_id, channel_ref, lock=True)
        await db.delete(channel)
        await audit.record(db, who, team_id, "channel", _ref(channel), "delete", status="warning",
                           metadata={"name": channel.name, "provider": channel.provider})


async def test(state: AppState, who: Identity, provider: object, config: object) -> dict[str, str]:
    """Validate, then deliver a synthetic event without saving anything (§14.4)."""
    prov = check_provider(provider)
    cfg, _ = await _config(state, prov, config)
    event = {"event": "channel.test", "timestamp": clock.iso(clock.now()), "team_id": "test",
             "actor": {"type": "system"}, "resource": {"id": "test", "type": "channel"}}
    try:
        await deliver(Target("test", prov, cfg), event, f"test-{uuid.uuid4().hex}",
                      timeout=state.settings.channel_timeout_sec, allow_private=state.settings.channels_allow_private)
    except DeliveryError as exc:
        raise ApiError(f"test delivery failed: {exc}", code="delivery_failed", status=502) from exc
    return {"status": "ok"}


async def targets_for(state: AppState, team_id: uuid.UUID, event_name: str) -> list[Target]:
    """The team's channels subscribed to an event, with their config decrypted (for the dispatcher)."""
    async with state.db() as db:
        rows = list(await db.scalars(select(Channel).where(Channel.team_id == team_id,
                                                           Channel.event_types.contains([event_name]))))
    key = state.settings.encryption_key
    return [Target(_ref(c), c.provider, crypto.decrypt_config(key, c.config)) for c in rows]
