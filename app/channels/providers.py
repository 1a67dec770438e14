"""Channel providers: config validation (400 naming the field) and delivery of one event.

* ``webhook``: our own sender. ``POST url`` with the event JSON, signed
  ``X-WRENN-SIGNATURE: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`` where ``timestamp`` is
  exactly the ``X-Wrenn-Timestamp`` header; ``X-Wrenn-Delivery`` (stable per event and channel, so a
  receiver can drop a redelivery) and ``X-Wrenn-Event-Id`` (the stream ID). Redirects are not followed;
  only 2xx counts.
* Chat providers go through Apprise: Telegram and Matrix always; Discord, Slack, Teams and Google Chat when
  Apprise recognises the webhook URL as the provider's own. A webhook URL Apprise does not recognise is a
  compatible endpoint (Mattermost's Slack-style hooks, a Discord proxy, …): it gets the provider's JSON
  message shape posted directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import re
import socket
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import apprise
import httpx
import orjson

from app.core import clock
from app.core.errors import InvalidRequest
from app.core.security import token_hex

log = logging.getLogger("wrenn.channels")

PROVIDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # provider: (required fields, optional fields)
    "discord": (("webhook_url",), ()),
    "slack": (("webhook_url",), ()),
    "teams": (("webhook_url",), ()),
    "googlechat": (("webhook_url",), ()),
    "telegram": (("bot_token", "chat_id"), ()),
    "matrix": (("homeserver_url", "access_token", "room_id"), ()),
    "webhook": (("url",), ("secret",)),
}
URL_FIELDS = {"webhook_url", "url", "homeserver_url"}
MAX_VALUE = 2048
TELEGRAM_TOKEN_RE = re.compile(r"^\d{3,}:[A-Za-z0-9_-]{20,}$")
TELEGRAM_CHAT_RE = re.compile(r"^(-?\d{1,20}|@[A-Za-z][A-Za-z0-9_]{3,})$")
MATRIX_ROOM_RE = re.compile(r"^[!#][^:\s]+:[^\s]+$")
DELIVERY_NS = uuid.UUID("6f1c7e52-3b0e-4d8e-9a52-8d7f4b1e2c11")


class DeliveryError(Exception):
    """The target did not accept the message; the text says why."""


@dataclass(frozen=True)
class Target:
    channel_id: str  # ``ch-…`` or "test"
    provider: str
    config: dict[str, str]


# --- validation ----------------------------------------------------------------------------------


def check_provider(provider: object, field: str = "provider") -> str:
    if not isinstance(provider, str) or provider not in PROVIDERS:
        raise InvalidRequest(f"{field}: must be one of {', '.join(PROVIDERS)}")
    return provider


async def validate_config(provider: str, config: object, *, allow_private: bool) -> tuple[dict[str, str], str | None]:
    """Clean a config for ``provider``; returns (config, generated webhook secret or None)."""
    if not isinstance(config, dict):
        raise InvalidRequest("config: must be an object of strings")
    required, optional = PROVIDERS[provider]
    clean: dict[str, str] = {}
    for key, value in config.items():
        if key not in required and key not in optional:
            raise InvalidRequest(f"config.{key}: unknown field for provider {provider}")
        if not isinstance(value, str):
            raise InvalidRequest(f"config.{key}: must be a string")
        value = value.strip()
        if len(value) > MAX_VALUE:
            raise InvalidRequest(f"config.{key}: longer than {MAX_VALUE} characters")
        if value:
            clean[key] = value
    for key in required:
        if key not in clean:
            raise InvalidRequest(f"config.{key}: field required for provider {provider}")
    _check_shapes(provider, clean)
    for key in sorted(URL_FIELDS & clean.keys()):
        await check_url(clean[key], f"config.{key}", allow_private=allow_private)
    generated = None
    if provider == "webhook" and "secret" not in clean:
        clean["secret"] = generated = token_hex(32)
    return clean, generated


def _check_shapes(provider: str, config: dict[str, str]) -> None:
    if provider == "telegram":
        if not TELEGRAM_TOKEN_RE.match(config["bot_token"]):
            raise InvalidRequest("config.bot_token: not a Telegram bot token (<digits>:<token>)")
        if not TELEGRAM_CHAT_RE.match(config["chat_id"]):
            raise InvalidRequest("config.chat_id: must be a numeric chat ID or @channelname")
    elif provider == "matrix" and not MATRIX_ROOM_RE.match(config["room_id"]):
        raise InvalidRequest("config.room_id: must look like !room:server or #alias:server")
    elif provider == "webhook" and "secret" in config and len(config["secret"]) < 16:
        raise InvalidRequest("config.secret: must be at least 16 characters")


async def check_url(url: str, field: str, *, allow_private: bool) -> None:
    """http(s) with a host; unless private targets are allowed, every address it resolves to is public."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"{field}: not a valid URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"{field}: must be an http or https URL")
    if parts.username or parts.password:
        raise InvalidRequest(f"{field}: must not contain credentials")
    if allow_private:
        return
    host = parts.hostname
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:
        raise InvalidRequest(f"{field}: host {host} does not resolve") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise InvalidRequest(f"{field}: {host} resolves to a non-public address ({address})")


# --- messages --------------------------------------------------------------------------------------

SUMMARY = {
    "capsule.create": "Capsule {id} created",
    "capsule.pause": "Capsule {id} paused",
    "capsule.resume": "Capsule {id} resumed",
    "capsule.destroy": "Capsule {id} destroyed",
    "template.snapshot.create": "Snapshot {id} created",
    "template.snapshot.delete": "Snapshot {id} deleted",
    "host.up": "Host {id} is up",
    "host.down": "Host {id} is down",
    "channel.test": "Test notification from Wrenn",
}


def text_message(event: dict[str, Any]) -> tuple[str, str]:
    """(title, body) for chat providers: a summary line, then Event/Resource/Actor/Team/Time lines."""
    resource = event.get("resource") or {}
    actor = event.get("actor") or {}
    name = str(event.get("event", ""))
    title = SUMMARY.get(name, name).format(id=resource.get("id", ""))
    if event.get("outcome") == "error":
        title += " — failed"
    actor_text = actor.get("name") or actor.get("id") or actor.get("type", "system")
    lines = [
        f"Event: {name}",
        f"Resource: {resource.get('type', '')} {resource.get('id', '')}",
        f"Actor: {actor_text}",
        f"Team: {event.get('team_id', '')}",
        f"Time: {event.get('timestamp', '')}",
    ]
    reason = (event.get("metadata") or {}).get("reason")
    if reason:
        lines.append(f"Reason: {reason}")
    if event.get("error"):
        lines.append(f"Error: {event['error']}")
    return title, "\n".join(lines)


def delivery_id(event_id: str, channel_id: str) -> str:
    """Stable across retries and restarts: a receiver dedupes on it."""
    return str(uuid.uuid5(DELIVERY_NS, f"{event_id}/{channel_id}"))


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


# --- delivery ----------------------------------------------------------------------------------------


async def deliver(target: Target, event: dict[str, Any], event_id: str, *, timeout: float, allow_private: bool) -> None:  # noqa: ASYNC109
    """Send one event to one target; raises ``DeliveryError`` when it was not accepted."""
    provider, config = target.provider, target.config
    try:
        if provider == "webhook":
            await check_url(config["url"], "url", allow_private=allow_private)
            await _webhook(target, event, event_id, timeout)
            return
        url_field = "homeserver_url" if provider == "matrix" else "webhook_url"
        if url_field in config:
            await check_url(config[url_field], url_field, allow_private=allow_private)
        title, body = text_message(event)
        apprise_url = apprise_url_for(provider, config)
        if apprise_url is not None:
            await _apprise(apprise_url, title, body, timeout)
        else:
            await _compatible_webhook(provider, config["webhook_url"], title, body, timeout)
    except InvalidRequest as exc:
        raise DeliveryError(f"target refused: {exc.message}") from exc


async def _webhook(target: Target, event: dict[str, Any], event_id: str, timeout: float) -> None:  # noqa: ASYNC109
    body = orjson.dumps(event)
    timestamp = clock.iso(clock.now().replace(microsecond=0)) or ""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "wrenn-webhooks/1",
        "X-WRENN-SIGNATURE": signature(target.config.get("secret", ""), timestamp, body),
        "X-Wrenn-Timestamp": timestamp,
        "X-Wrenn-Delivery": delivery_id(event_id, target.channel_id),
        "X-Wrenn-Event-Id": event_id,
        "X-Wrenn-Event": str(event.get("event", "")),
    }
    await _post(target.config["url"], content=body, headers=headers, timeout=timeout)


async def _post(url: str, *, timeout: float, **kwargs: Any) -> None:  # noqa: ASYNC109
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            response = await client.post(url, **kwargs)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__) from exc
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"HTTP {response.status_code}: {response.text[:200]}")


async def _compatible_webhook(provider: str, url: str, title: str, body: str, timeout: float) -> None:  # noqa: ASYNC109
    text = f"{title}\n\n{body}"
    payload: dict[str, Any]
    if provider == "discord":
        payload = {"content": text[:2000]}
    elif provider == "teams":
        payload = {"@type": "MessageCard", "@context": "https://schema.org/extensions", "summary": title,
                   "title": title, "text": body.replace("\n", "<br>")}
    else:  # slack, googlechat (both take {"text": …})
        payload = {"text": text}
    await _post(url, json=payload, timeout=timeout)


def apprise_url_for(provider: str, config: dict[str, str]) -> str | None:
    """The Apprise URL for a config, or None when the webhook URL is a compatible (non-native) endpoint."""
    if provider == "telegram":
        return f"tgram://{config['bot_token']}/{config['chat_id']}/?format=text"
    if provider == "matrix":
        hs = urlsplit(config["homeserver_url"])
        scheme = "matrixs" if hs.scheme == "https" else "matrix"
        netloc = hs.hostname or ""
        if hs.port:
            netloc += f":{hs.port}"
        room = quote(config["room_id"], safe="")
        token = quote(config["access_token"], safe="")
        return f"{scheme}://{netloc}/{room}?mode=off&discovery=no&format=text&token={token}"
    url = config["webhook_url"]
    plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    return url if plugin is not None and _plugin_matches(provider, plugin) else None


_PLUGIN_PROTOCOLS = {"discord": "discord", "slack": "slack", "teams": "msteams", "googlechat": "gchat"}


def _plugin_matches(provider: str, plugin: Any) -> bool:
    protocols = getattr(plugin, "secure_protocol", ()) or ()
    if isinstance(protocols, str):
        protocols = (protocols,)
    return _PLUGIN_PROTOCOLS[provider] in protocols


async def _apprise(url: str, title: str, body: str, timeout: float) -> None:  # noqa: ASYNC109
    notifier = apprise.Apprise()
    if not notifier.add(url):
        raise DeliveryError("the provider configuration is not usable")
    with apprise.LogCapture(level=logging.WARNING) as captured:
        try:
            ok = await asyncio.wait_for(notifier.async_notify(body=body, title=title), timeout=timeout * 3)
        except TimeoutError as exc:
            raise DeliveryError("timed out") from exc
        problems = captured.getvalue().strip()
    if not ok:
        raise DeliveryError((problems.splitlines()[-1] if problems else "the provider refused the message")[:500])
