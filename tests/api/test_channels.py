"""Notification channels: CRUD, validation (400 naming the field), encryption at rest, test delivery and the
consumer-group dispatcher (signed webhooks, filters, retries, recorded failures) against local receivers."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from app.auth.identity import Identity
from app.channels import crypto
from app.channels.providers import apprise_url_for
from app.core import ids
from app.core.config import Settings
from app.core.redis import make_redis
from app.events import service as events
from app.main import create_app
from tests.api.helpers import Client, Platform
from tests.fakes.github import ServerThread
from tests.fakes.matrix import FakeMatrix
from tests.fakes.webhook import WebhookReceiver


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, str]]:
    rx = WebhookReceiver()
    with ServerThread(rx.app()) as server:
        yield rx, f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def fast_app(settings: Settings, flushed_redis: None) -> AsyncIterator[FastAPI]:
    """The app with loopback targets allowed and short retry delays."""
    settings.channels_allow_private = True
    settings.channel_retry_delays_sec = [0.3, 0.6]
    settings.channel_timeout_sec = 3
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def fp(fast_app: FastAPI, settings: Settings) -> AsyncIterator[Platform]:
    p = Platform(fast_app, settings)
    yield p
    await p.close()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = make_redis(settings.redis_url)
    yield client
    await client.aclose()


async def _create(c: Client, **body: Any) -> dict[str, Any]:
    r = await c.post("/v1/channels", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _wait(predicate: Callable[[], bool], wait: float = 20) -> None:
    deadline = time.monotonic() + wait
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


# --- CRUD, secrecy, audit ---------------------------------------------------------------------------


async def test_crud_secret_shown_once_config_encrypted_and_audited(fp: Platform, settings: Settings) -> None:
    platform = fp
    owner = await platform.user()
    created = await _create(owner, name="Ops Alerts", provider="webhook", config={"url": "https://example.com/h"},
                            events=["capsule.create", "host.down"])
    assert created["name"] == "ops-alerts" and created["provider"] == "webhook"
    assert created["events"] == ["capsule.create", "host.down"] and created["team_id"] == owner.team_id
    assert re.fullmatch(r"[0-9a-f]{64}", created["secret"])
    assert created["id"].startswith("ch-") and created["created_at"].endswith("Z")
    cid = created["id"]

    got = (await owner.get(f"/v1/channels/{cid}")).json()
    assert "secret" not in got and "config" not in got and got["name"] == "ops-alerts"
    listed = (await owner.get("/v1/channels")).json()
    assert [c["id"] for c in listed] == [cid] and "config" not in listed[0]

    conn = await asyncpg.connect(settings.database_url)
    try:
        stored = await conn.fetchval("SELECT config::text FROM channels WHERE id = $1", ids.decode(ids.CHANNEL, cid))
    finally:
        await conn.close()
    assert "example.com" not in stored and created["secret"] not in stored
    import orjson

    cipher = orjson.loads(stored)
    assert set(cipher) == {"url", "secret"}
    assert len(base64.b64decode(cipher["url"])) == 12 + len("https://example.com/h") + 16
    assert crypto.decrypt_config(settings.encryption_key, cipher) == {"url": "https://example.com/h",
                                                                     "secret": created["secret"]}

    r = await owner.patch(f"/v1/channels/{cid}", json={"name": "pager", "events": ["capsule.destroy"]})
    assert r.status_code == 200 and r.json()["name"] == "pager" and r.json()["events"] == ["capsule.destroy"]
    assert "secret" not in r.json()
    await _create(owner, name="other", provider="slack", config={"webhook_url": "https://hooks.example.com/x"},
                  events=["host.up"])
    r = await owner.patch(f"/v1/channels/{cid}", json={"name": "other", "events": ["host.up"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    r = await owner.post("/v1/channels", json={"name": "PAGER", "provider": "webhook",
                                                "config": {"url": "https://example.com/z"}, "events": ["host.up"]})
    assert r.status_code == 409

    # Rotation replaces the config; a regenerated secret is returned in that response (§22 row 28).
    r = await owner.put(f"/v1/channels/{cid}/config", json={"config": {"url": "https://example.org/new"}})
    assert r.status_code == 200, r.text
    new_secret = r.json()["secret"]
    assert new_secret != created["secret"]
    r = await owner.put(f"/v1/channels/{cid}/config",
                        json={"config": {"url": "https://example.org/new", "secret": "s" * 20}})
    assert r.status_code == 200 and "secret" not in r.json()
    r = await owner.put(f"/v1/channels/{cid}/config", json={"config": {"webhook_url": "https://example.org"}})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("config.webhook_url")

    # Another team sees nothing.
    stranger = await platform.user()
    for method, body in (("GET", None), ("PATCH", {"name": "x", "events": ["host.up"]}), ("DELETE", None)):
        r = await stranger.request(method, f"/v1/channels/{cid}", json=body)
        assert r.status_code == 404, (method, r.text)
    r = await stranger.put(f"/v1/channels/{cid}/config", json={"config": {"url": "https://example.org"}})
    assert r.status_code == 404
    assert (await stranger.get("/v1/channels")).json() == []

    assert (await owner.delete(f"/v1/channels/{cid}")).status_code == 204
    assert (await owner.get(f"/v1/channels/{cid}")).status_code == 404
    assert (await owner.delete(f"/v1/channels/{cid}")).status_code == 404

    entries = (await owner.get("/v1/audit-logs", params={"resource_type": "channel"})).json()["entries"]
    actions = [(e["action"], e["level"]) for e in entries if e["resource_id"] == cid]
    assert actions == [("delete", "warning"), ("rotate_config", "info"), ("rotate_config", "info"),
                       ("update", "info"), ("create", "success")]
    assert all(e["actor_id"] == owner.user_id and e["ip_address"] for e in entries)


async def test_channels_need_a_session(platform: Platform) -> None:
    owner = await platform.user()
    key = (await owner.post("/v1/api-keys", json={"name": "k"})).json()["key"]
    r = await platform.client().get("/v1/channels", headers={"X-API-Key": key})
    assert r.status_code == 401


@pytest.mark.parametrize(("body", "field"), [
    ({"provider": "carrier-pigeon"}, "provider"),
    ({"name": "bad/name"}, "name"),
    ({"name": ""}, "name"),
    ({"events": []}, "events"),
    ({"events": ["capsule.create", "capsule.state.changed"]}, "events[1]"),
    ({"events": ["volume.create"]}, "events[0]"),
    ({"config": {}}, "config.url"),
    ({"config": "https://x"}, "config"),
    ({"config": {"url": "ftp://example.com/x"}}, "config.url"),
    ({"config": {"url": "not a url"}}, "config.url"),
    ({"config": {"url": "https://user:pw@example.com/"}}, "config.url"),
    ({"config": {"url": "http://127.0.0.1:9/x"}}, "config.url"),  # SSRF guard: loopback
    ({"config": {"url": "http://10.1.2.3/x"}}, "config.url"),  # private
    ({"config": {"url": "http://[::1]:8080/x"}}, "config.url"),
    ({"config": {"url": "https://host.invalid/x"}}, "config.url"),  # does not resolve
    ({"config": {"url": "https://93.184.215.14", "token": "x"}}, "config.token"),
    ({"config": {"url": "https://93.184.215.14", "secret": 5}}, "config.secret"),
    ({"config": {"url": "https://93.184.215.14", "secret": "short"}}, "config.secret"),
    ({"provider": "slack", "config": {"url": "https://93.184.215.14"}}, "config.url"),
    ({"provider": "discord", "config": {}}, "config.webhook_url"),
    ({"provider": "telegram", "config": {"bot_token": "nope", "chat_id": "1"}}, "config.bot_token"),
    ({"provider": "telegram", "config": {"bot_token": "123456:" + "a" * 30, "chat_id": "x y"}}, "config.chat_id"),
    ({"provider": "telegram", "config": {"bot_token": "123456:" + "a" * 30}}, "config.chat_id"),
    ({"provider": "matrix", "config": {"homeserver_url": "https://matrix.org", "access_token": "t",
                                       "room_id": "general"}}, "config.room_id"),
    ({"provider": "matrix", "config": {"homeserver_url": "https://matrix.org", "room_id": "!a:b"}},
     "config.access_token"),
])
async def test_bad_config_is_a_400_naming_the_field(platform: Platform, body: dict[str, Any], field: str) -> None:
    owner = await platform.user()
    full = {"name": "c", "provider": "webhook", "config": {"url": "https://93.184.215.14/h"},
            "events": ["capsule.create"], **body}
    r = await owner.post("/v1/channels", json=full)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert r.json()["error"]["message"].startswith(f"{field}:"), r.json()
    r = await owner.post("/v1/channels/test", json={"provider": full["provider"], "config": full["config"]})
    if field.startswith(("config", "provider")):
        assert r.status_code == 400 and r.json()["error"]["message"].startswith(f"{field}:")
    assert (await owner.get("/v1/channels")).json() == []


async def test_every_provider_is_accepted_with_its_fields(fp: Platform) -> None:
    owner = await fp.user()
    configs = {
        "discord": {"webhook_url": "https://discord.com/api/webhooks/123456/abcDEF"},
        "slack": {"webhook_url": "https://hooks.slack.com/services/T000/B000/XXXX"},
        "teams": {"webhook_url": "https://example.webhook.office.com/webhookb2/x"},
        "googlechat": {"webhook_url": "https://chat.googleapis.com/v1/spaces/AAA/messages?key=k&token=t"},
        "telegram": {"bot_token": "123456789:" + "A" * 35, "chat_id": "-100123"},
        "matrix": {"homeserver_url": "https://matrix.example.org", "access_token": "syt_abc",
                   "room_id": "!room:example.org"},
        "webhook": {"url": "https://example.com/hook", "secret": "x" * 32},
    }
    for provider, config in configs.items():
        created = await _create(owner, name=provider, provider=provider, config=config, events=["host.up"])
        assert created["provider"] == provider
        assert ("secret" in created) == (provider == "webhook")
    assert len((await owner.get("/v1/channels")).json()) == 7
    # Chat providers Apprise knows natively go through Apprise; compatible endpoints are posted directly.
    assert apprise_url_for("discord", configs["discord"]) == configs["discord"]["webhook_url"]
    assert apprise_url_for("slack", configs["slack"]) is not None
    assert apprise_url_for("slack", {"webhook_url": "https://mattermost.example.com/hooks/x"}) is None
    assert apprise_url_for("telegram", configs["telegram"]).startswith("tgram://")  # type: ignore[union-attr]
    assert apprise_url_for("matrix", configs["matrix"]).startswith("matrixs://matrix.example.org/")  # type: ignore[union-attr]


# --- test delivery --------------------------------------------------------------------------------


async def test_test_endpoint_signs_and_reports_failures(
    fp: Platform, receiver: tuple[WebhookReceiver, str]
) -> None:
    rx, base = receiver
    rx.secret = "k" * 32
    owner = await fp.user()
    r = await owner.post("/v1/channels/test", json={"provider": "webhook",
                                                    "config": {"url": f"{base}/hook", "secret": rx.secret}})
    assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text
    accepted, _, _ = rx.snapshot()
    assert accepted[0].event["event"] == "channel.test" and accepted[0].event["resource"] == {"id": "test",
                                                                                              "type": "channel"}
    assert rx.bad_signatures == 0

    r = await owner.post("/v1/channels/test", json={"provider": "slack", "config": {"webhook_url": f"{base}/chat"}})
    assert r.status_code == 200, r.text
    r = await owner.post("/v1/channels/test", json={"provider": "discord", "config": {"webhook_url": f"{base}/chat"}})
    assert r.status_code == 200, r.text
    assert rx.chat[0]["text"].startswith("Test notification from Wrenn\n\nEvent: channel.test")
    assert rx.chat[1]["content"].startswith("Test notification from Wrenn")

    # A wrong secret: the receiver refuses the signature → the test reports a delivery failure.
    r = await owner.post("/v1/channels/test", json={"provider": "webhook",
                                                    "config": {"url": f"{base}/hook", "secret": "w" * 32}})
    assert r.status_code == 502 and r.json()["error"]["code"] == "delivery_failed"
    assert "401" in r.json()["error"]["message"]
    r = await owner.post("/v1/channels/test", json={"provider": "webhook", "config": {"url": "http://127.0.0.1:1/"}})
    assert r.status_code == 502 and r.json()["error"]["code"] == "delivery_failed"
    assert (await owner.get("/v1/channels")).json() == []  # nothing saved


async def test_matrix_goes_through_apprise_to_the_homeserver(fp: Platform) -> None:
    matrix = FakeMatrix()
    owner = await fp.user()
    with ServerThread(matrix.app()) as server:
        config = {"homeserver_url": f"http://127.0.0.1:{server.port}", "access_token": matrix.token,
                  "room_id": matrix.room_id}
        r = await owner.post("/v1/channels/test", json={"provider": "matrix", "config": config})
        assert r.status_code == 200, r.text
        assert matrix.messages[0]["msgtype"] == "m.text"
        assert "Test notification from Wrenn" in matrix.messages[0]["body"]
        assert "Event: channel.test" in matrix.messages[0]["body"]
        r = await owner.post("/v1/channels/test", json={"provider": "matrix",
                                                        "config": {**config, "room_id": "!elsewhere:example.org"}})
        assert r.status_code == 502 and r.json()["error"]["code"] == "delivery_failed", r.text
        assert len(matrix.messages) == 1


# --- dispatcher -------------------------------------------------------------------------------------


async def _publish(redis: Redis, name: str, team_ref: str, resource: str, **kw: Any) -> str:
    rtype = "host" if name.startswith("host.") else "sandbox"
    outcome = None if rtype == "host" or name == "capsule.state.changed" else "success"
    entry = await events.publish(redis, events.make_event(name, ids.decode(ids.TEAM, team_ref), resource, rtype,
                                                          outcome=outcome, **kw))
    assert entry is not None
    return entry


async def test_dispatcher_delivers_signed_filtered_events(
    fp: Platform, receiver: tuple[WebhookReceiver, str], redis: Redis
) -> None:
    rx, base = receiver
    owner, other = await fp.user(), await fp.user()
    created = await _create(owner, name="hook", provider="webhook", config={"url": f"{base}/hook"},
                            events=["capsule.create", "capsule.destroy", "host.down"])
    rx.secret = created["secret"]
    # Events come from the one publishing function, as the services publish them.
    user = Identity(kind="session", team_id=None, user_id=ids.decode(ids.USER, owner.user_id), email=owner.email)
    wanted = [await _publish(redis, "capsule.create", owner.team_id, "cl-1", who=user, metadata={"template": "m"})]
    await _publish(redis, "capsule.pause", owner.team_id, "cl-1")  # not subscribed
    await _publish(redis, "capsule.state.changed", owner.team_id, "cl-1", metadata={"from": "a", "to": "b"})
    await _publish(redis, "capsule.create", owner.team_id, "cl-1")  # system follow-up without reason: skipped
    await _publish(redis, "capsule.destroy", other.team_id, "cl-2")  # another team
    wanted.append(await _publish(redis, "capsule.destroy", owner.team_id, "cl-1", metadata={"reason": "orphaned"}))
    wanted.append(await _publish(redis, "host.down", owner.team_id, "host-1"))
    await _wait(lambda: len(rx.snapshot()[0]) >= 3)
    await asyncio.sleep(0.5)
    accepted, duplicates, _ = rx.snapshot()
    assert sorted(d.event_id for d in accepted) == sorted(wanted) and duplicates == [] and rx.bad_signatures == 0
    first = next(d for d in accepted if d.event_id == wanted[0])
    assert first.event["event"] == "capsule.create" and first.event["team_id"] == owner.team_id
    assert first.event["actor"] == {"type": "user", "id": owner.user_id, "name": owner.email}
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-wrenn-signature"].startswith("sha256=")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first.headers["x-wrenn-timestamp"])


async def test_target_down_is_retried_then_recorded_and_never_blocks_requests(
    fp: Platform, receiver: tuple[WebhookReceiver, str], redis: Redis
) -> None:
    rx, base = receiver
    owner = await fp.user()
    flaky = await _create(owner, name="flaky", provider="webhook", config={"url": f"{base}/hook"},
                          events=["host.up"])
    rx.secret = flaky["secret"]
    down = await _create(owner, name="down", provider="webhook", config={"url": "http://127.0.0.1:1/hook"},
                         events=["host.up"])
    rx.fail_next = 2  # the first two attempts get a 500; the third succeeds
    started = time.monotonic()
    event_id = await _publish(redis, "host.up", owner.team_id, "host-9")
    assert time.monotonic() - started < 0.5  # publishing never waits for delivery
    await _wait(lambda: len(rx.snapshot()[0]) == 1)
    accepted, duplicates, attempts = rx.snapshot()
    assert accepted[0].event_id == event_id and attempts == 3 and duplicates == []

    async def failure() -> list[dict[str, Any]]:
        r = await owner.get("/v1/audit-logs", params={"action": "delivery_failed"})
        return list(r.json()["entries"])

    deadline = time.monotonic() + 20
    while not (entries := await failure()):
        assert time.monotonic() < deadline, "no failure recorded"
        await asyncio.sleep(0.1)
    (entry,) = entries
    assert entry["resource_type"] == "channel" and entry["resource_id"] == down["id"]
    assert entry["status"] == "failure" and entry["actor_type"] == "system"
    assert entry["metadata"]["attempts"] == "3" and entry["metadata"]["event_id"] == event_id
    assert entry["metadata"]["event"] == "host.up" and entry["metadata"]["error"]
    # Nothing is left queued.
    assert await redis.xlen("wrenn:channel-deliveries") == 0
