"""Field rules shared by several domains (control-plane.md §17). Each raises a 400 naming the field."""

from __future__ import annotations

import re

from app.core.errors import InvalidRequest
from app.core.security import password_problem

EMAIL_RE = re.compile(r"^[a-zA-Z0-9._%+\-]+@[a-zA-Z0-9.\-]+\.[a-zA-Z]{2,}$")
TEAM_NAME_RE = re.compile(r"^[A-Za-z0-9 _\-@']{1,128}$")
SAFE_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")
MAX_EMAIL = 254


def normalize_email(value: str) -> str:
    return value.strip().lower()


def email(value: str, field: str = "email") -> str:
    value = normalize_email(value)
    if len(value) > MAX_EMAIL or not EMAIL_RE.match(value):
        raise InvalidRequest(f"{field}: not a valid email address")
    return value


def password(value: str, field: str = "password") -> str:
    problem = password_problem(value)
    if problem:
        raise InvalidRequest(f"{field}: {problem}")
    return value


def display_name(value: str, field: str = "name") -> str:
    value = value.strip()
    if not 1 <= len(value) <= 100:
        raise InvalidRequest(f"{field}: must be 1-100 characters")
    return value


def team_name(value: str, field: str = "name") -> str:
    value = value.strip()
    if not TEAM_NAME_RE.match(value):
        raise InvalidRequest(f"{field}: must be 1-128 characters of letters, digits, space, _ - @ '")
    return value


def safe_name(value: str, field: str = "name") -> str:
    if not SAFE_NAME_RE.match(value):
        raise InvalidRequest(f"{field}: must match {SAFE_NAME_RE.pattern}")
    return value
