"""Platform-admin operations on users and teams (control-plane.md §5.4)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.models import User
from app.apikeys import service as apikeys
from app.apikeys.models import ApiKey
from app.audit import service as audit
from app.auth import sessions
from app.auth.identity import Identity
from app.core import clock, ids
from app.core.errors import InvalidRequest, NotFound
from app.core.state import AppState
from app.teams import service as teams
from app.teams.models import Membership, Team

# Capsule domain registers how to stop the capsules of teams a disabled user owns.
UserDisabledHook = Callable[[AppState, AsyncSession, list[uuid.UUID]], Awaitable[None]]
USER_DISABLED_HOOKS: list[UserDisabledHook] = []


def _page(query: Any, page: int | None, per_page: int) -> Any:
    if page is None:
        return query
    return query.offset((page - 1) * per_page).limit(per_page)


async def list_users(state: AppState, page: int | None, per_page: int) -> list[dict[str, Any]]:
    teams_count = (
        select(func.count()).select_from(Membership).where(Membership.user_id == User.id).scalar_subquery()
    )
    query = (
        select(User, teams_count)
        .where(User.status != "deleted")
        .order_by(User.created_at.desc(), User.id)
    )
    async with state.db() as db:
        rows = (await db.execute(_page(query, page, per_page))).all()
    return [
        {
            "id": ids.encode(ids.USER, u.id),
            "email": u.email,
            "name": u.name,
            "is_admin": u.is_admin,
            "status": u.status,
            "is_active": u.status == "active",
            "teams_count": count,
            "created_at": clock.iso(u.created_at),
        }
        for u, count in rows
    ]


async def list_teams(state: AppState, page: int | None, per_page: int) -> list[dict[str, Any]]:
    members = (
        select(func.count()).select_from(Membership).where(Membership.team_id == Team.id).scalar_subquery()
    )
    owner = (
        select(User.email)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.team_id == Team.id, Membership.role == "owner")
        .limit(1)
        .scalar_subquery()
    )
    query = (
        select(Team, members, owner)
        .where(Team.id != ids.ZERO_UUID)
        .order_by(Team.deleted_at.is_not(None), Team.created_at.desc(), Team.id)
    )
    async with state.db() as db:
        rows = (await db.execute(_page(query, page, per_page))).all()
    return [
        {
            **teams.team_json(t),
            "member_count": count,
            "owner_email": owner_email or "",
            "deleted_at": clock.iso(t.deleted_at),
        }
        for t, count, owner_email in rows
    ]


async def _user(db: AsyncSession, user_ref: str) -> User:
    user = await db.scalar(
        select(User).where(User.id == ids.decode(ids.USER, user_ref, "user id"), User.status != "deleted")
    )
    if user is None:
        raise NotFound("user not found")
    return user


async def set_active(state: AppState, who: Identity, user_ref: str, active: bool) -> None:
    async with state.db() as db, db.begin():
        user = await _user(db, user_ref)
        if not active and user.id == who.user_id:
            raise InvalidRequest("you cannot deactivate yourself")
        if active:
            user.status = "active"
        else:
            user.status = "disabled"
            await apikeys.delete_where(state, db, ApiKey.created_by == user.id)
            owned = list(await db.scalars(
                select(Membership.team_id).where(Membership.user_id == user.id, Membership.role == "owner")
            ))
            for hook in USER_DISABLED_HOOKS:
                await hook(state, db, owned)
            await sessions.revoke_all(state, db, user.id)
        user.updated_at = clock.now()
        await audit.record(db, who, None, "user", user_ref, "activate" if active else "deactivate",
                           scope="admin")


async def set_admin(state: AppState, who: Identity, user_ref: str, admin: bool) -> None:
    async with state.db() as db, db.begin():
        user = await _user(db, user_ref)
        if admin:
            user.is_admin = True
        else:
            # One conditional statement, so two concurrent revocations cannot remove the last admin.
            others = select(func.count()).select_from(User).where(
                User.is_admin.is_(True), User.status != "deleted", User.id != user.id
            ).scalar_subquery()
            result = await db.execute(
                update(User).where(User.id == user.id, others > 0).values(is_admin=False)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise InvalidRequest("Cannot remove the last admin")
        await audit.record(db, who, None, "user", user_ref, "grant_admin" if admin else "revoke_admin",
                           scope="admin")
    await sessions.invalidate_user_cache(state, user.id)


async def _team(db: AsyncSession, team_ref: str) -> Team:
    team_id = ids.decode(ids.TEAM, team_ref, "team id")
    team = await db.scalar(select(Team).where(Team.id == team_id, Team.deleted_at.is_(None)))
    if team is None or team.id == ids.ZERO_UUID:
        raise NotFound("team not found")
    return team


async def set_byoc(state: AppState, who: Identity, team_ref: str, byoc: bool) -> None:
    if not byoc:
        raise InvalidRequest("byoc: BYOC cannot be disabled once enabled")
    async with state.db() as db, db.begin():
        team = await _team(db, team_ref)
        team.is_byoc = True
        await audit.record(db, who, team.id, "team", team_ref, "enable_byoc", scope="admin")


async def delete_team(state: AppState, who: Identity, team_ref: str) -> None:
    async with state.db() as db, db.begin():
        team = await _team(db, team_ref)
        await teams.teardown(state, db, team.id)
        await audit.record(db, who, team.id, "team", team_ref, "delete", scope="admin")
