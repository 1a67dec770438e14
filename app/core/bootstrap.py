"""First-start bootstrap: a platform admin, a team API key, and ``<data-dir>/bootstrap.json``."""

from __future__ import annotations

import json
import secrets
from typing import Any

from sqlalchemy import func, select

from app.accounts import service as accounts
from app.accounts.models import User
from app.apikeys import service as apikeys
from app.auth.identity import Identity
from app.core import ids
from app.core.config import Settings, write_private
from app.core.db import make_engine, make_sessionmaker
from app.core.mail import Mailer
from app.core.redis import make_redis
from app.core.state import AppState

ADMIN_EMAIL = "admin@wrenn.local"


async def bootstrap(settings: Settings, url: str) -> dict[str, Any] | None:
    """Create the first admin and key when the platform has no users; return what was written."""
    path = settings.data_dir / "bootstrap.json"
    engine = make_engine(settings.database_url, pool_size=2)
    state = AppState(settings=settings, engine=engine, db=make_sessionmaker(engine),
                     redis=make_redis(settings.redis_url), mailer=Mailer(settings))
    try:
        async with state.db() as db:
            users = await db.scalar(select(func.count()).select_from(User))
        if users:
            return None
        password = secrets.token_urlsafe(18)
        user_id, team_id = await accounts.create_admin(state, ADMIN_EMAIL, password, "Admin")
        who = Identity(kind="session", team_id=team_id, user_id=user_id, email=ADMIN_EMAIL)
        key = await apikeys.create(state, who, team_id, "bootstrap")
    finally:
        await state.redis.aclose()
        await engine.dispose()
    record = {
        "url": url,
        "admin_email": ADMIN_EMAIL,
        "admin_password": password,
        "team_id": ids.encode(ids.TEAM, team_id),
        "api_key": key["key"],
    }
    write_private(path, json.dumps(record, indent=2))
    return record
