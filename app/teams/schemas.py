from __future__ import annotations

from pydantic import Field

from app.core.schemas import Body


class TeamNameRequest(Body):
    name: str = Field(max_length=1000)


class AddMemberRequest(Body):
    email: str = Field(max_length=1000)


class RoleRequest(Body):
    role: str = Field(max_length=100)
