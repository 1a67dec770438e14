from __future__ import annotations

from pydantic import Field

from app.core.schemas import Body


class SignupRequest(Body):
    email: str = Field(max_length=1000)
    password: str = Field(max_length=1000)
    name: str = Field(max_length=1000)


class LoginRequest(Body):
    email: str = Field(max_length=1000)
    password: str = Field(max_length=1000)


class TokenRequest(Body):
    token: str = Field(max_length=1000)


class SwitchTeamRequest(Body):
    team_id: str = Field(max_length=200)


class RenameRequest(Body):
    name: str = Field(max_length=1000)


class DeleteAccountRequest(Body):
    confirmation: str = Field(max_length=1000)


class ChangePasswordRequest(Body):
    new_password: str = Field(max_length=1000)
    current_password: str | None = Field(default=None, max_length=1000)
    confirm_password: str | None = Field(default=None, max_length=1000)


class ResetRequest(Body):
    email: str = Field(max_length=1000)


class ResetConfirmRequest(Body):
    token: str = Field(max_length=1000)
    new_password: str = Field(max_length=1000)
