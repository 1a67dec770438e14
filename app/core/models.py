"""Import every model so Alembic and ``Base.metadata`` see the whole schema."""

from app.accounts.models import OAuthProvider, Session, User
from app.apikeys.models import ApiKey
from app.audit.models import AuditLog
from app.builds.models import TemplateBuild
from app.capsules.models import Capsule, DailyUsage, MetricPoint, MetricsSnapshot
from app.channels.models import Channel
from app.core.db import Base
from app.hosts.models import Host, HostRefreshToken, HostTag, HostToken
from app.snapshots.models import Template
from app.teams.models import Membership, Team

__all__ = [
    "ApiKey", "AuditLog", "Base", "Capsule", "Channel", "DailyUsage", "Host", "HostRefreshToken",
    "HostTag", "HostToken", "Membership", "MetricPoint", "MetricsSnapshot", "OAuthProvider",
    "Session", "Team", "Template", "TemplateBuild", "User",
]
