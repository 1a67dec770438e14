"""Hosts: records, registration, refresh, heartbeat, tags and deletion (control-plane.md §4.6, §10)."""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth.identity import Identity
from app.capsules.models import Capsule
from app.core import clock, ids, validation
from app.core.errors import ApiError, Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from app.core.redis import host_registration_key
from app.core.security import sha256_hex, token_hex
from app.core.state import AppState
from app.events import service as events
from app.hostagent.client import AgentError
from app.hostagent.proto import hostagent_pb2 as pb
from app.hostagent.tls import issue_host_cert
from app.hosts import agents
from app.hosts.models import Host, HostRefreshToken, HostTag, HostToken
from app.hosts.tokens import REFRESH_TTL, REGISTRATION_TTL, sign_host_jwt
from app.teams.models import Membership, Team

log = logging.getLogger("wrenn.hosts")

ACTIVE_ON_HOST = ("pending", "starting", "running", "missing")
DESTROY_ON_DELETE = ("pending", "starting", "running", "missing", "paused", "pausing", "resuming")


def host_json(host: Host) -> dict[str, Any]:
    """Host JSON; zero/empty optional fields are omitted like the reference does."""
    body: dict[str, Any] = {
        "id": ids.encode(ids.HOST, host.id),
        "type": host.type,
        "team_id": ids.encode(ids.TEAM, host.team_id) if host.team_id else None,
        "status": host.status,
        "last_heartbeat_at": clock.iso(host.last_heartbeat_at),
        "created_by": ids.encode(ids.USER, host.created_by) if host.created_by else "",
        "created_at": clock.iso(host.created_at),
        "updated_at": clock.iso(host.updated_at),
    }
    for key in ("provider", "availability_zone", "arch", "cpu_cores", "memory_mb", "disk_gb", "address"):
        value = getattr(host, key)
        if value:
            body[key] = value
    if host.metadata_:
        body["metadata"] = host.metadata_
    return body


# --- permissions -----------------------------------------------------------------------------


async def _can_manage_byoc(db: AsyncSession, who: Identity, team_id: uuid.UUID) -> bool:
    role = await db.scalar(
        select(Membership.role).where(Membership.team_id == team_id, Membership.user_id == who.user_id)
    )
    return role in ("owner", "admin")


async def _visible_host(db: AsyncSession, who: Identity, host_ref: str) -> Host:
    """A host the caller may see; anything else is 404 (never reveal other teams' hosts)."""
    host = await db.get(Host, ids.decode(ids.HOST, host_ref, "host id"))
    if host is None:
        raise NotFound("host not found")
    if who.is_admin:
        return host
    if host.team_id is None or host.team_id != who.team_id:
        raise NotFound("host not found")
    return host


async def _managed_host(db: AsyncSession, who: Identity, host_ref: str) -> Host:
    host = await _visible_host(db, who, host_ref)
    if who.is_admin:
        return host
    assert host.team_id is not None
    if not await _can_manage_byoc(db, who, host.team_id):
        raise Forbidden("only team owners and admins can manage the team's hosts")
    return host


# --- create and registration tokens ----------------------------------------------------------


async def create(
    state: AppState, who: Identity, kind: str, team_ref: str | None, provider: str, zone: str
) -> dict[str, Any]:
    if kind not in ("regular", "byoc"):
        raise InvalidRequest("type: must be 'regular' or 'byoc'")
    async with state.db() as db, db.begin():
        team_id = await _check_create_permission(db, who, kind, team_ref)
        now = clock.now()
        host = Host(id=ids.new_uuid(), type=kind, team_id=team_id, provider=provider, availability_zone=zone,
                    status="pending", created_by=who.user_id, created_at=now, updated_at=now, metadata_={})
        db.add(host)
        await db.flush()
        token = await new_registration_token(state, db, host, who)
        await audit.record(db, who, team_id, "host", ids.encode(ids.HOST, host.id), "create",
                           scope="admin" if kind == "regular" else "team", metadata={"type": kind})
    return {"host": host_json(host), "registration_token": token}


async def _check_create_permission(
    db: AsyncSession, who: Identity, kind: str, team_ref: str | None
) -> uuid.UUID | None:
    if kind == "regular":
        if not who.is_admin:
            raise Forbidden("only platform admins can create regular hosts")
        return None
    if not team_ref:
        raise InvalidRequest("team_id: required for BYOC hosts")
    team_id = ids.decode(ids.TEAM, team_ref, "team_id")
    team = await db.scalar(select(Team).where(Team.id == team_id, Team.deleted_at.is_(None)))
    if team is None or not team.is_byoc:
        raise Forbidden("team does not exist or does not have BYOC enabled")
    if not who.is_admin and not await _can_manage_byoc(db, who, team_id):
        raise Forbidden("only team owners and admins can create BYOC hosts")
    return team_id


async def new_registration_token(state: AppState, db: AsyncSession, host: Host, who: Identity | None) -> str:
    token = token_hex(32)
    record = HostToken(id=ids.new_uuid(), host_id=host.id, created_by=who.user_id if who else None,
                       created_at=clock.now(),
                       expires_at=clock.now() + timedelta(seconds=REGISTRATION_TTL))
    db.add(record)
    payload = {"host_id": ids.encode(ids.HOST, host.id), "token_id": ids.encode(ids.HOST_TOKEN, record.id)}
    await state.redis.set(host_registration_key(token), orjson.dumps(payload), ex=REGISTRATION_TTL)
    return token


async def regenerate_token(state: AppState, who: Identity, host_ref: str) -> dict[str, Any]:
    async with state.db() as db, db.begin():
        host = await _managed_host(db, who, host_ref)
        if host.status != "pending":
            raise Conflict("host is not pending; it has already registered")
        token = await new_registration_token(state, db, host, who)
    return {"host": host_json(host), "registration_token": token}


# --- agent-facing: register, refresh, heartbeat ---------------------------------------------


def _credentials(state: AppState, host: Host, refresh: str) -> tuple[dict[str, Any], Any]:
    cert = issue_host_cert(agents.ca_of(state), ids.encode(ids.HOST, host.id), host.address)
    body = {
        "token": sign_host_jwt(state.settings.jwt_secret, host.id),
        "refresh_token": refresh,
        "cert_pem": cert.cert_pem,
        "key_pem": cert.key_pem,
        "ca_cert_pem": cert.ca_cert_pem,
    }
    return body, cert


def _new_refresh_row(host_id: uuid.UUID) -> tuple[str, HostRefreshToken]:
    raw = token_hex(32)
    now = clock.now()
    return raw, HostRefreshToken(id=ids.new_uuid(), host_id=host_id, token_hash=sha256_hex(raw), created_at=now,
                                 expires_at=now + REFRESH_TTL)


async def register(state: AppState, token: str, spec: dict[str, Any]) -> dict[str, Any]:
    if not token:
        raise InvalidRequest("token: field required")
    if not spec.get("address"):
        raise InvalidRequest("address: field required")
    raw = await state.redis.getdel(host_registration_key(token)) if len(token) <= 128 else None
    if not raw:
        raise Unauthorized("invalid or expired credentials")
    record = orjson.loads(raw)
    host_id = ids.decode(ids.HOST, record["host_id"])
    async with state.db() as db, db.begin():
        host = await db.scalar(select(Host).where(Host.id == host_id, Host.status == "pending").with_for_update())
        if host is None:
            raise NotFound("host already registered or not found")
        for key in ("arch", "cpu_cores", "memory_mb", "disk_gb", "address"):
            setattr(host, key, spec[key])
        refresh, row = _new_refresh_row(host.id)
        body, cert = _credentials(state, host, refresh)
        now = clock.now()
        host.cert_fingerprint, host.cert_expires_at = cert.fingerprint, cert.expires_at
        host.status, host.last_heartbeat_at, host.updated_at = "online", now, now
        db.add(row)
        await db.execute(update(HostToken).where(HostToken.id == ids.decode(ids.HOST_TOKEN, record["token_id"]))
                         .values(used_at=now))
        await audit.record(db, None, host.team_id, "host", record["host_id"], "register",
                           scope="admin" if host.team_id is None else "team", metadata={"address": host.address})
    await events.publish(state.redis, events.make_event("host.up", host.team_id, record["host_id"], "host",
                                                        metadata={"reason": "registered"}))
    return {"host": host_json(host), **body}


async def refresh(state: AppState, refresh_token: str) -> dict[str, Any]:
    now = clock.now()
    async with state.db() as db, db.begin():
        old = await db.scalar(
            select(HostRefreshToken)
            .where(HostRefreshToken.token_hash == sha256_hex(refresh_token or ""),
                   HostRefreshToken.revoked_at.is_(None), HostRefreshToken.expires_at > now)
            .with_for_update()
        )
        if old is None:
            raise Unauthorized("invalid, expired or revoked refresh token")
        host = await db.get(Host, old.host_id)
        if host is None:
            raise Unauthorized("invalid, expired or revoked refresh token")
        raw, row = _new_refresh_row(host.id)
        body, cert = _credentials(state, host, raw)
        # Insert the new token before revoking the old one: a crash leaves two valid tokens, never none.
        db.add(row)
        await db.flush()
        old.revoked_at = now
        host.cert_fingerprint, host.cert_expires_at, host.updated_at = cert.fingerprint, cert.expires_at, now
    return {"host": host_json(host), **body}


async def heartbeat(state: AppState, caller: uuid.UUID, host_ref: str) -> bool:
    """Record a heartbeat; returns True when the host just came back from ``unreachable``."""
    host_id = ids.decode(ids.HOST, host_ref, "host id")
    if host_id != caller:
        raise Forbidden("host ID does not match the token")
    async with state.db() as db, db.begin():
        host = await db.get(Host, host_id, with_for_update=True)
        if host is None:
            raise NotFound("host not found")
        came_back = host.status == "unreachable"
        host.last_heartbeat_at = clock.now()
        if came_back:
            host.status = "online"
            if host.team_id is not None:
                await audit.record(db, None, host.team_id, "host", host_ref, "marked_up")
    if came_back:
        await events.publish(state.redis, events.make_event("host.up", host.team_id, host_ref, "host"))
    return came_back


# --- reads, tags, delete ---------------------------------------------------------------------


async def list_hosts(state: AppState, who: Identity) -> list[dict[str, Any]]:
    query = select(Host).order_by(Host.created_at)
    if not who.is_admin:
        if who.team_id is None:
            return []
        query = query.where(Host.team_id == who.team_id)
    async with state.db() as db:
        return [host_json(h) for h in await db.scalars(query)]


async def get_host(state: AppState, who: Identity, host_ref: str) -> dict[str, Any]:
    async with state.db() as db:
        return host_json(await _visible_host(db, who, host_ref))


async def list_tags(state: AppState, who: Identity, host_ref: str) -> list[str]:
    async with state.db() as db:
        host = await _visible_host(db, who, host_ref)
        return list(await db.scalars(select(HostTag.tag).where(HostTag.host_id == host.id).order_by(HostTag.tag)))


async def add_tag(state: AppState, who: Identity, host_ref: str, tag: str) -> None:
    tag = validation.safe_name(tag.strip(), "tag")
    async with state.db() as db, db.begin():
        host = await _visible_host(db, who, host_ref)
        if await db.get(HostTag, (host.id, tag)) is None:
            db.add(HostTag(host_id=host.id, tag=tag))


async def remove_tag(state: AppState, who: Identity, host_ref: str, tag: str) -> None:
    async with state.db() as db, db.begin():
        host = await _visible_host(db, who, host_ref)
        await db.execute(delete(HostTag).where(HostTag.host_id == host.id, HostTag.tag == tag))


async def _capsules_on(db: AsyncSession, host_id: uuid.UUID, statuses: tuple[str, ...]) -> list[Capsule]:
    return list(await db.scalars(select(Capsule).where(Capsule.host_id == host_id, Capsule.status.in_(statuses))))


async def delete_preview(state: AppState, who: Identity, host_ref: str) -> dict[str, Any]:
    async with state.db() as db:
        host = await _managed_host(db, who, host_ref)
        capsules = await _capsules_on(db, host.id, ACTIVE_ON_HOST)
    return {"host": host_json(host), "sandbox_ids": [ids.encode(ids.CAPSULE, c.id) for c in capsules]}


async def delete_host(state: AppState, who: Identity, host_ref: str, force: bool) -> None:
    async with state.db() as db:
        host = await _managed_host(db, who, host_ref)
        blocking = await _capsules_on(db, host.id, ACTIVE_ON_HOST)
        doomed = await _capsules_on(db, host.id, DESTROY_ON_DELETE)
    if blocking and not force:
        blocking_ids = [ids.encode(ids.CAPSULE, c.id) for c in blocking]
        err = ApiError("host has active capsules; use force=true to destroy them", code="host_has_sandboxes",
                       status=409, extra={"sandbox_ids": blocking_ids})
        err.top_level = {"sandbox_ids": blocking_ids}
        raise err
    if host.address and host.status != "pending":
        await _wind_down_agent(state, host, doomed)
    async with state.db() as db, db.begin():
        if doomed:
            await db.execute(update(Capsule).where(Capsule.id.in_([c.id for c in doomed]))
                             .values(status="stopped", last_updated=clock.now()))
        await db.execute(update(HostRefreshToken).where(HostRefreshToken.host_id == host.id,
                                                        HostRefreshToken.revoked_at.is_(None))
                         .values(revoked_at=clock.now()))
        await db.execute(delete(Host).where(Host.id == host.id))
        await audit.record(db, who, host.team_id, "host", host_ref, "delete",
                           scope="admin" if host.team_id is None else "team",
                           metadata={"destroyed": str(len(doomed))})
    if host.status != "pending":
        await events.publish(state.redis, events.make_event("host.down", host.team_id, host_ref, "host",
                                                            metadata={"reason": "deleted"}))
    await agents.forget(state, host.id)


async def _wind_down_agent(state: AppState, host: Host, doomed: list[Capsule]) -> None:
    """Best effort: destroy the host's capsules, then tell the agent to terminate."""
    client = agents.client_for(state, host.id, host.address)
    for capsule in doomed:
        with contextlib.suppress(AgentError):
            await client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id=ids.encode(ids.CAPSULE, capsule.id)))
    try:
        await client.terminate(pb.TerminateRequest())
    except AgentError as exc:
        log.info("terminate on host %s failed (%s); its next heartbeat gets 404", host.id, exc.code)
