"""Stats, usage and snapshot routes without capsules (in-process app, real Postgres and Redis): shapes for
an empty team, parameter validation, and the refusals that come before any host is involved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.api.helpers import Client, Platform


async def _api_key(user: Client, platform: Platform) -> Client:
    r = await user.post("/v1/api-keys", json={"name": "stats"})
    assert r.status_code == 201, r.text
    return platform.client(headers={"X-API-Key": r.json()["key"]})


async def test_stats_and_usage_of_an_empty_team(platform: Platform) -> None:
    user = await platform.user()
    key = await _api_key(user, platform)
    for client in (user, key):
        r = await client.get("/v1/capsules/stats")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "range": "1h",
            "current": {"running_count": 0, "vcpus_reserved": 0, "memory_mb_reserved": 0, "sampled_at": None},
            "peaks": {"running_count": 0, "vcpus": 0, "memory_mb": 0},
            "series": {"labels": [], "running": [], "vcpus": [], "memory_mb": []},
        }
        today = datetime.now(UTC).date()
        r = await client.get("/v1/capsules/usage")
        assert r.status_code == 200
        assert r.json() == {"from": (today - timedelta(days=29)).isoformat(), "to": today.isoformat(), "points": []}
    r = await platform.client().get("/v1/capsules/stats")
    assert r.status_code == 401


async def test_stats_and_usage_validation(platform: Platform) -> None:
    user = await platform.user()
    for range_ in ("5m", "1h", "6h", "24h", "30d"):
        r = await user.get("/v1/capsules/stats", params={"range": range_})
        assert r.status_code == 200 and r.json()["range"] == range_
    for bad in ("", "10m", "2h", "1H", "30", "5m "):
        r = await user.get("/v1/capsules/stats", params={"range": bad})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", bad

    ok = [({"from": "2026-01-01", "to": "2026-04-03"}, ("2026-01-01", "2026-04-03")),  # exactly 92 days
          ({"from": "2026-03-01", "to": "2026-03-01"}, ("2026-03-01", "2026-03-01")),
          ({"to": "2026-03-31"}, ("2026-03-02", "2026-03-31"))]
    for params, (start, end) in ok:
        r = await user.get("/v1/capsules/usage", params=params)
        assert r.status_code == 200, (params, r.text)
        assert (r.json()["from"], r.json()["to"]) == (start, end)
    for params in ({"from": "2026-01-01", "to": "2026-04-04"}, {"from": "2026-03-02", "to": "2026-03-01"},
                   {"from": "2026-02-29"}, {"to": "31-03-2026"}, {"from": "2026-3-1"}, {"from": "today"}):
        r = await user.get("/v1/capsules/usage", params=params)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", params


async def test_snapshot_routes_before_any_host(platform: Platform) -> None:
    user = await platform.user()
    key = await _api_key(user, platform)
    templates = (await key.get("/v1/snapshots")).json()
    assert "minimal" in [t["name"] for t in templates] and all(t["platform"] is True for t in templates)
    minimal = next(t for t in templates if t["name"] == "minimal")
    assert minimal["platform"] is True and minimal["type"] == "base" and minimal["created_at"].endswith("Z")
    assert minimal["size_bytes"] == 0  # no host to ask
    assert (await key.get("/v1/snapshots", params={"type": "snapshot"})).json() == []
    assert (await key.get("/v1/snapshots", params={"type": "nope"})).status_code == 400

    r = await key.post("/v1/snapshots", json={})
    assert r.status_code == 400
    r = await key.post("/v1/snapshots", json={"sandbox_id": "cl-" + "0" * 25, "name": "bad/name"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    r = await key.post("/v1/snapshots", json={"sandbox_id": "cl-" + "0" * 25, "name": "minimal"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "name_reserved"
    r = await key.post("/v1/snapshots", json={"sandbox_id": "cl-" + "0" * 24 + "7", "name": "fine"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await key.delete("/v1/snapshots/minimal")
    assert r.status_code == 403
    r = await key.delete("/v1/snapshots/unknown")
    assert r.status_code == 404
    r = await platform.client().get("/v1/snapshots")
    assert r.status_code == 401
