"""The shared Redis client and key names."""

from __future__ import annotations

from redis.asyncio import Redis


def make_redis(url: str) -> Redis:
    return Redis.from_url(url, decode_responses=True, health_check_interval=30)


def session_key(session_hash: str) -> str:
    return f"wrenn:session:{session_hash}"


def user_sessions_key(user_id: str) -> str:
    """Set of a user's cached session hashes, for fast invalidation."""
    return f"wrenn:user_sessions:{user_id}"


def activation_key(token_hash: str) -> str:
    return f"wrenn:activation:{token_hash}"


def password_reset_key(token_hash: str) -> str:
    return f"wrenn:password_reset:{token_hash}"


def host_registration_key(token: str) -> str:
    return f"host:reg:{token}"
