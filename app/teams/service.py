"""Teams and memberships (control-plane.md §5.1–5.3)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.models import Session, User
from app.audit import service as audit
from app.auth import sessions
from app.auth.identity import Identity
from app.core import clock, ids, validation
from app.core.errors import ApiError, Forbidden, InvalidRequest, NotFound
from app.core.state import AppState
from app.teams.models import Membership, Team

ROLES_THAT_MANAGE = {"owner", "admin"}

# Other domains (capsules, snapshots, channels) register the work they must do when a team is
# torn down; each hook runs inside the teardown transaction.
TeardownHook = Callable[[AppState, AsyncSession, uuid.UUID], Awaitable[None]]
TEARDOWN_HOOKS: list[TeardownHook] = []


def team_json(team: Team) -> dict[str, Any]:
    return {
        "id": ids.encode(ids.TEAM, team.id),
        "name": team.name,
        "slug": team.slug,
        "is_byoc": team.is_byoc,
        "created_at": clock.iso(team.created_at),
    }


def member_json(user: User, membership: Membership) -> dict[str, Any]:
    return {
        "user_id": ids.encode(ids.USER, user.id),
        "email": user.email,
        "name": user.name,
        "role": membership.role,
        "joined_at": clock.iso(membership.created_at),
    }


async def _create_team(db: AsyncSession, owner: User, name: str, is_default: bool) -> Team:
    team = Team(id=ids.new_uuid(), name=name, slug=ids.team_slug(), created_at=clock.now())
    db.add(team)
    await db.flush()
    db.add(Membership(team_id=team.id, user_id=owner.id, role="owner", is_default=is_default,
                      created_at=clock.now()))
    await db.flush()
    return team


def _default_team_name(user: User) -> str:
    name = f"{user.name or user.email.split('@')[0]}'s Team"
    return name if validation.TEAM_NAME_RE.match(name) else "My Team"


async def ensure_login_team(db: AsyncSession, user: User) -> tuple[uuid.UUID, str]:
    """The team a new session binds to; creates the default team on first login."""
    rows = (await db.execute(
        select(Membership)
        .join(Team, Team.id == Membership.team_id)
        .where(Membership.user_id == user.id, Team.deleted_at.is_(None))
        .order_by(Membership.is_default.desc(), Membership.created_at)
    )).scalars().all()
    if rows:
        return rows[0].team_id, rows[0].role
    team = await _create_team(db, user, _default_team_name(user), is_default=True)
    active_users = await db.scalar(select(func.count()).select_from(User).where(User.status == "active"))
    if active_users == 1:
        user.is_admin = True  # the first user of a platform administers it
    return team.id, "owner"


def scoped_team(who: Identity, team_ref: str) -> uuid.UUID:
    """Team routes act on the caller's active team only (403 otherwise: switch team first)."""
    team_id = ids.decode(ids.TEAM, team_ref, "team id")
    if who.team_id != team_id:
        raise Forbidden("team does not match the active team; use switch-team first")
    return team_id


async def _role(db: AsyncSession, team_id: uuid.UUID, user_id: uuid.UUID | None) -> str:
    role = await db.scalar(
        select(Membership.role).where(Membership.team_id == team_id, Membership.user_id == user_id)
    )
    if role is None:
        raise Forbidden("not a member of this team")
    return role


async def _live_team(db: AsyncSession, team_id: uuid.UUID) -> Team:
    team = await db.scalar(select(Team).where(Team.id == team_id, Team.deleted_at.is_(None)))
    if team is None:
        raise NotFound("team not found")
    return team


async def list_teams(state: AppState, who: Identity) -> list[dict[str, Any]]:
    async with state.db() as db:
        rows = await db.execute(
            select(Team, Membership)
            .join(Membership, Membership.team_id == Team.id)
            .where(Membership.user_id == who.user_id, Team.deleted_at.is_(None))
            .order_by(Membership.created_at)
        )
        return [{**team_json(t), "role": m.role, "is_default": m.is_default} for t, m in rows.all()]


async def create_team(state: AppState, who: Identity, name: str) -> dict[str, Any]:
    name = validation.team_name(name)
    async with state.db() as db, db.begin():
        user = await db.get(User, who.require_user())
        assert user is not None
        team = await _create_team(db, user, name, is_default=False)
        await audit.record(db, who, team.id, "team", ids.encode(ids.TEAM, team.id), "create",
                           metadata={"name": name})
    await state.mailer.send(who.email, f"Team {name} created", f"You created the team {name}.\n")
    return {**team_json(team), "role": "owner", "is_default": False}


async def get_team(state: AppState, who: Identity, team_id: uuid.UUID) -> dict[str, Any]:
    async with state.db() as db:
        team = await _live_team(db, team_id)
        await _role(db, team_id, who.user_id)
        members = await _members(db, team_id)
    return {"team": team_json(team), "members": members}


async def _members(db: AsyncSession, team_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await db.execute(
        select(User, Membership)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.team_id == team_id)
        .order_by(Membership.created_at)
    )
    return [member_json(u, m) for u, m in rows.all()]


async def list_members(state: AppState, who: Identity, team_id: uuid.UUID) -> list[dict[str, Any]]:
    async with state.db() as db:
        await _live_team(db, team_id)
        await _role(db, team_id, who.user_id)
        return await _members(db, team_id)


async def rename_team(state: AppState, who: Identity, team_id: uuid.UUID, name: str) -> None:
    name = validation.team_name(name)
    async with state.db() as db, db.begin():
        await _live_team(db, team_id)
        if await _role(db, team_id, who.user_id) not in ROLES_THAT_MANAGE:
            raise Forbidden("only the team owner or an admin can rename the team")
        await db.execute(update(Team).where(Team.id == team_id).values(name=name))
        await audit.record(db, who, team_id, "team", ids.encode(ids.TEAM, team_id), "rename",
                           scope="admin", metadata={"name": name})


async def delete_team(state: AppState, who: Identity, team_id: uuid.UUID) -> None:
    async with state.db() as db, db.begin():
        await _live_team(db, team_id)
        if await _role(db, team_id, who.user_id) != "owner":
            raise Forbidden("only the team owner can delete the team")
        await teardown(state, db, team_id)
        await audit.record(db, who, team_id, "team", ids.encode(ids.TEAM, team_id), "delete", scope="admin")


async def teardown(state: AppState, db: AsyncSession, team_id: uuid.UUID) -> None:
    """Soft-delete a team and everything that hangs off it (§5.3), inside the caller's transaction."""
    from app.apikeys.models import ApiKey
    from app.apikeys.service import delete_where

    for hook in TEARDOWN_HOOKS:
        await hook(state, db, team_id)
    await delete_where(state, db, ApiKey.team_id == team_id)
    member_ids = list(await db.scalars(select(Membership.user_id).where(Membership.team_id == team_id)))
    await db.execute(update(Session).where(Session.team_id == team_id).values(team_id=None))
    await db.execute(delete(Membership).where(Membership.team_id == team_id))
    await db.execute(update(Team).where(Team.id == team_id).values(deleted_at=clock.now()))
    for user_id in member_ids:
        await sessions.invalidate_user_cache(state, user_id)


async def add_member(state: AppState, who: Identity, team_id: uuid.UUID, email: str) -> dict[str, Any]:
    email = validation.email(email)
    async with state.db() as db, db.begin():
        await _live_team(db, team_id)
        if await _role(db, team_id, who.user_id) not in ROLES_THAT_MANAGE:
            raise Forbidden("only the team owner or an admin can add members")
        user = await db.scalar(select(User).where(User.email == email, User.status == "active"))
        if user is None:
            raise NotFound("no account with that email")
        exists = await db.scalar(
            select(Membership).where(Membership.team_id == team_id, Membership.user_id == user.id)
        )
        if exists is not None:
            raise InvalidRequest("user is already a member of this team")
        membership = Membership(team_id=team_id, user_id=user.id, role="member", created_at=clock.now())
        db.add(membership)
        await audit.record(db, who, team_id, "member", ids.encode(ids.USER, user.id), "add",
                           scope="admin", metadata={"email": email})
    return member_json(user, membership)


async def _target_membership(db: AsyncSession, team_id: uuid.UUID, user_ref: str) -> Membership:
    user_id = ids.decode(ids.USER, user_ref, "user id")
    membership = await db.scalar(
        select(Membership).where(Membership.team_id == team_id, Membership.user_id == user_id)
    )
    if membership is None:
        raise NotFound("user is not a member of this team")
    return membership


async def set_role(state: AppState, who: Identity, team_id: uuid.UUID, user_ref: str, role: str) -> None:
    if role not in ("admin", "member"):
        raise InvalidRequest("role: must be 'admin' or 'member'")
    async with state.db() as db, db.begin():
        await _live_team(db, team_id)
        if await _role(db, team_id, who.user_id) not in ROLES_THAT_MANAGE:
            raise Forbidden("only the team owner or an admin can change roles")
        target = await _target_membership(db, team_id, user_ref)
        if target.role == "owner":
            raise Forbidden("the owner's role cannot be changed")
        target.role = role
        await audit.record(db, who, team_id, "member", user_ref, "role_change", scope="admin",
                           metadata={"role": role})
    await sessions.invalidate_user_cache(state, target.user_id)


async def remove_member(state: AppState, who: Identity, team_id: uuid.UUID, user_ref: str) -> None:
    async with state.db() as db, db.begin():
        await _live_team(db, team_id)
        if await _role(db, team_id, who.user_id) not in ROLES_THAT_MANAGE:
            raise Forbidden("only the team owner or an admin can remove members")
        target = await _target_membership(db, team_id, user_ref)
        if target.role == "owner":
            raise Forbidden("the owner cannot be removed")
        await db.delete(target)
        await audit.record(db, who, team_id, "member", user_ref, "remove", scope="admin")
    await sessions.invalidate_user_cache(state, target.user_id)


async def leave(state: AppState, who: Identity, team_id: uuid.UUID) -> None:
    async with state.db() as db, db.begin():
        await _live_team(db, team_id)
        role = await _role(db, team_id, who.user_id)
        if role == "owner":
            raise ApiError("the owner cannot leave the team; delete it instead", code="forbidden", status=403)
        await db.execute(
            delete(Membership).where(Membership.team_id == team_id, Membership.user_id == who.user_id)
        )
        await audit.record(db, who, team_id, "member", who.actor_id, "leave")
    await sessions.invalidate_user_cache(state, who.require_user())
