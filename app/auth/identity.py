"""Who is calling: the authenticated principal every dependency hands to a router."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from app.core import ids


@dataclass
class Identity:
    kind: Literal["session", "api_key"]
    team_id: uuid.UUID | None
    user_id: uuid.UUID | None = None
    email: str = ""
    name: str = ""
    role: str = ""
    is_admin: bool = False
    session_hash: str | None = None
    csrf: str = ""
    api_key_id: uuid.UUID | None = None
    api_key_name: str = ""
    ip: str = ""
    user_agent: str = ""

    @property
    def actor_type(self) -> str:
        return "api_key" if self.kind == "api_key" else "user"

    @property
    def actor_id(self) -> str | None:
        if self.kind == "api_key" and self.api_key_id:
            return ids.encode(ids.API_KEY, self.api_key_id)
        return ids.encode(ids.USER, self.user_id) if self.user_id else None

    @property
    def actor_name(self) -> str:
        return self.api_key_name if self.kind == "api_key" else (self.email or self.name)

    def require_user(self) -> uuid.UUID:
        assert self.user_id is not None, "session identity without a user"
        return self.user_id
