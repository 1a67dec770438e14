"""Login throttling: too many failures for one email or one IP → 429 with Retry-After."""

from __future__ import annotations

from app.core.errors import RateLimited
from app.core.security import sha256_hex
from app.core.state import AppState


def _keys(email: str, ip: str) -> tuple[str, str]:
    return f"wrenn:login_fail:email:{sha256_hex(email)}", f"wrenn:login_fail:ip:{ip}"


async def check(state: AppState, email: str, ip: str) -> None:
    s = state.settings
    email_key, ip_key = _keys(email, ip)
    async with state.redis.pipeline(transaction=False) as pipe:
        pipe.get(email_key)
        pipe.ttl(email_key)
        pipe.get(ip_key)
        pipe.ttl(ip_key)
        email_count, email_ttl, ip_count, ip_ttl = await pipe.execute()
    blocked = []
    if email_count and int(email_count) >= s.login_max_failures_per_email:
        blocked.append(email_ttl)
    if ip_count and int(ip_count) >= s.login_max_failures_per_ip:
        blocked.append(ip_ttl)
    if blocked:
        retry = max(1, max(int(t) for t in blocked))
        raise RateLimited("too many failed login attempts; try again later",
                          headers={"Retry-After": str(retry)})


async def failed(state: AppState, email: str, ip: str) -> None:
    window = state.settings.login_failure_window_sec
    async with state.redis.pipeline(transaction=True) as pipe:
        for key in _keys(email, ip):
            # SET NX starts the window once (EXPIRE NX needs Redis 7; the embedded server is 6.2).
            pipe.set(key, 0, nx=True, ex=window)
            pipe.incr(key)
        await pipe.execute()


async def succeeded(state: AppState, email: str) -> None:
    await state.redis.delete(_keys(email, "")[0])
