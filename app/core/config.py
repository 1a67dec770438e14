"""All settings, read once from the environment (a ``.env`` file may be loaded first).

Embedded mode (the default) fills missing secrets from ``<data-dir>/secrets.json``, generating them
on first start; production mode (``WRENN_ENV=production``) refuses to start without them.
"""

from __future__ import annotations

import json
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("wrenn"))


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    env: Literal["embedded", "development", "production"] = Field(
        "embedded", validation_alias=AliasChoices("WRENN_ENV")
    )
    data_dir: Path = Field(default_factory=default_data_dir, validation_alias=AliasChoices("WRENN_DIR"))
    listen_addr: str = Field(":8080", validation_alias=AliasChoices("WRENN_CP_LISTEN_ADDR"))
    log_level: str = Field("info", validation_alias=AliasChoices("LOG_LEVEL"))

    database_url: str = Field("", validation_alias=AliasChoices("DATABASE_URL"))
    redis_url: str = Field("", validation_alias=AliasChoices("REDIS_URL"))

    jwt_secret: str = Field("", validation_alias=AliasChoices("JWT_SECRET"))
    encryption_key: str = Field("", validation_alias=AliasChoices("WRENN_ENCRYPTION_KEY"))
    ca_cert: str = Field("", validation_alias=AliasChoices("WRENN_CA_CERT"))
    ca_key: str = Field("", validation_alias=AliasChoices("WRENN_CA_KEY"))

    public_url: str = Field("", validation_alias=AliasChoices("CP_PUBLIC_URL"))
    oauth_redirect_url: str = Field("", validation_alias=AliasChoices("OAUTH_REDIRECT_URL"))
    # "auto": Secure only over TLS or X-Forwarded-Proto https (and always when public_url is https).
    cookie_secure: Literal["auto", "true", "false"] = Field(
        "auto", validation_alias=AliasChoices("WRENN_COOKIE_SECURE")
    )
    proxy_domain: str = Field("", validation_alias=AliasChoices("WRENN_PROXY_DOMAIN"))

    github_client_id: str = Field("", validation_alias=AliasChoices("OAUTH_GITHUB_CLIENT_ID"))
    github_client_secret: str = Field("", validation_alias=AliasChoices("OAUTH_GITHUB_CLIENT_SECRET"))
    # Overridable so tests can point at a local OAuth server speaking GitHub's protocol.
    github_authorize_url: str = Field(
        "https://github.com/login/oauth/authorize", validation_alias=AliasChoices("WRENN_GITHUB_AUTHORIZE_URL")
    )
    github_token_url: str = Field(
        "https://github.com/login/oauth/access_token", validation_alias=AliasChoices("WRENN_GITHUB_TOKEN_URL")
    )
    github_api_url: str = Field("https://api.github.com", validation_alias=AliasChoices("WRENN_GITHUB_API_URL"))

    smtp_host: str = Field("", validation_alias=AliasChoices("SMTP_HOST"))
    smtp_port: int = Field(587, validation_alias=AliasChoices("SMTP_PORT"))
    smtp_username: str = Field("", validation_alias=AliasChoices("SMTP_USERNAME"))
    smtp_password: str = Field("", validation_alias=AliasChoices("SMTP_PASSWORD"))
    smtp_from: str = Field("noreply@wrenn.dev", validation_alias=AliasChoices("SMTP_FROM_EMAIL"))
    smtp_starttls: bool = Field(True, validation_alias=AliasChoices("SMTP_STARTTLS"))

    # Login throttling: failures allowed per window before 429.
    login_max_failures_per_email: int = Field(10, validation_alias=AliasChoices("WRENN_LOGIN_MAX_FAILURES"))
    login_max_failures_per_ip: int = Field(50, validation_alias=AliasChoices("WRENN_LOGIN_MAX_FAILURES_IP"))
    login_failure_window_sec: int = Field(900, validation_alias=AliasChoices("WRENN_LOGIN_FAILURE_WINDOW"))
    monitor_interval_sec: float = Field(15, validation_alias=AliasChoices("WRENN_MONITOR_INTERVAL"))
    host_dead_after_sec: float = Field(90, validation_alias=AliasChoices("WRENN_HOST_DEAD_AFTER"))
    session_cleanup_interval_sec: float = Field(900, validation_alias=AliasChoices("WRENN_SESSION_CLEANUP_INTERVAL"))
    # Set by ``wrenn-cp serve`` (embedded mode): the URL its local agent registers with.
    local_agent_cp_url: str = Field("", validation_alias=AliasChoices("WRENN_LOCAL_AGENT_CP_URL"))
    trusted_proxies: str = Field("127.0.0.1", validation_alias=AliasChoices("WRENN_TRUSTED_PROXIES"))
    bench_endpoints: bool = Field(False, validation_alias=AliasChoices("WRENN_BENCH_ENDPOINTS"))
    max_json_body_bytes: int = Field(1 << 20, validation_alias=AliasChoices("WRENN_MAX_JSON_BODY"))
    # Events (SSE): keepalive comment interval, per-subscriber buffer (a subscriber that falls this far
    # behind is cut off and resumes with Last-Event-ID), and the longest a single write may block.
    sse_keepalive_sec: float = Field(30, validation_alias=AliasChoices("WRENN_SSE_KEEPALIVE"))
    sse_buffer_events: int = Field(256, validation_alias=AliasChoices("WRENN_SSE_BUFFER"))
    sse_send_timeout_sec: float = Field(60, validation_alias=AliasChoices("WRENN_SSE_SEND_TIMEOUT"))
    # Notification channels: delays between delivery attempts (attempts = len + 1), per-attempt timeout,
    # and whether targets may be private/loopback addresses (SSRF guard off).
    channel_retry_delays_sec: list[float] = Field(
        default_factory=lambda: [10.0, 30.0, 120.0], validation_alias=AliasChoices("WRENN_CHANNEL_RETRY_DELAYS")
    )
    channel_timeout_sec: float = Field(10, validation_alias=AliasChoices("WRENN_CHANNEL_TIMEOUT"))
    channels_allow_private: bool = Field(False, validation_alias=AliasChoices("WRENN_CHANNELS_ALLOW_PRIVATE"))
    # PTY WebSocket keepalive ({"type":"ping"}) interval; the SDK expects one every 30 s.
    pty_ping_interval_sec: float = Field(30, validation_alias=AliasChoices("WRENN_PTY_PING_INTERVAL"))
    # Per-capsule port proxy: refuse requests without X-API-Key / session (401). False = reference behaviour
    # (the capsule ID is the only secret; a key or session that *is* sent must still be valid).
    proxy_require_auth: bool = Field(True, validation_alias=AliasChoices("WRENN_PROXY_REQUIRE_AUTH"))
    # Template builds: a CA bundle lent to build capsules for the build only (PIP_CERT, SSL_CERT_FILE, …), so
    # recipes can fetch packages behind a TLS-intercepting egress. "auto" = this machine's system bundle; "none".
    build_ca_bundle: str = Field("auto", validation_alias=AliasChoices("WRENN_BUILD_CA_BUNDLE"))

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen_addr.rpartition(":")
        return (host or "0.0.0.0", int(port or 8080))

    @property
    def github_enabled(self) -> bool:
        return bool(self.github_client_id and self.github_client_secret)

    @property
    def frontend_url(self) -> str:
        return (self.oauth_redirect_url or self.public_url or "http://localhost:8080").rstrip("/")

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    def ensure_secrets(self) -> None:
        """Fill missing secrets (embedded) or fail naming the variable (production)."""
        required = {
            "JWT_SECRET": "jwt_secret",
            "WRENN_ENCRYPTION_KEY": "encryption_key",
        }
        if self.production:
            for env_name, attr in required.items():
                if not getattr(self, attr):
                    raise ConfigError(f"{env_name} is required when WRENN_ENV=production")
            if not self.database_url:
                raise ConfigError("DATABASE_URL is required when WRENN_ENV=production")
            if not self.redis_url:
                raise ConfigError("REDIS_URL is required when WRENN_ENV=production")
            if self.github_enabled and not self.public_url:
                raise ConfigError("CP_PUBLIC_URL is required when GitHub OAuth is enabled")
            for env_name, attr in (("WRENN_CA_CERT", "ca_cert"), ("WRENN_CA_KEY", "ca_key")):
                if not getattr(self, attr):
                    raise ConfigError(f"{env_name} is required when WRENN_ENV=production")
        else:
            stored = load_or_create_secrets(self.data_dir)
            for attr in (*required.values(), "ca_cert", "ca_key"):
                if not getattr(self, attr):
                    setattr(self, attr, stored[attr])
        self._check_ca()
        if len(self.jwt_secret) < 32:
            raise ConfigError("JWT_SECRET must be at least 32 characters")
        try:
            if len(bytes.fromhex(self.encryption_key)) != 32:
                raise ValueError
        except ValueError as exc:
            raise ConfigError("WRENN_ENCRYPTION_KEY must be 64 hex characters") from exc

    def _check_ca(self) -> None:
        from app.hostagent.tls import TLSConfigError, load_ca

        try:
            load_ca(self.ca_cert, self.ca_key)
        except (TLSConfigError, ValueError) as exc:
            raise ConfigError(f"WRENN_CA_CERT / WRENN_CA_KEY are not a usable ECDSA P-256 CA: {exc}") from exc


def load_or_create_secrets(data_dir: Path) -> dict[str, str]:
    """Secrets generated once per data dir and kept there (mode 0600)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    for key, factory in (
        ("jwt_secret", lambda: secrets.token_hex(32)),
        ("encryption_key", lambda: secrets.token_hex(32)),
    ):
        if not stored.get(key):
            stored[key] = factory()
            changed = True
    if not stored.get("ca_cert") or not stored.get("ca_key"):
        from app.hostagent.tls import generate_ca

        ca = generate_ca()
        stored["ca_cert"], stored["ca_key"] = ca.cert_pem, ca.key_pem
        changed = True
    if changed:
        write_private(path, json.dumps(stored, indent=2))
    return stored


def write_private(path: Path, text: str) -> None:
    """Write a file readable only by its owner, never briefly world-readable."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@lru_cache
def get_settings() -> Settings:
    return Settings()
