"""Pure pieces of the agent: credentials file, refresh schedule, listen addresses, host facts."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest

from app.hostagent import tls
from app.hostagent.agent import default_listen, options_from_args
from app.hostagent.agent_core import AgentStartError, address_port, parse_listen
from app.hostagent.agent_creds import (
    Credentials,
    CredentialsError,
    go_arch,
    host_facts,
    load_credentials,
    save_credentials,
)

DAY = 86400


def _token(host_id: str = "host-abc", iat: int | None = None, lifetime: int = 7 * DAY) -> str:
    iat = int(time.time()) if iat is None else iat
    claims = {"typ": "host", "host_id": host_id, "sub": host_id, "iat": iat, "exp": iat + lifetime}
    return jwt.encode(claims, "s" * 32, algorithm="HS256")


def _answer(token: str | None = None) -> dict[str, object]:
    ca = tls.generate_ca()
    cert = tls.issue_host_cert(ca, "host-abc", "127.0.0.1:50051")
    return {"host": {"id": "host-abc"}, "token": token or _token(), "refresh_token": "r" * 64,
            "cert_pem": cert.cert_pem, "key_pem": cert.key_pem, "ca_cert_pem": cert.ca_cert_pem}


def test_registration_answer_gives_host_id_from_the_unverified_jwt() -> None:
    creds = Credentials.from_registration(_answer())
    assert creds.host_id == "host-abc" and creds.refresh_token == "r" * 64


@pytest.mark.parametrize("missing", ["token", "cert_pem", "key_pem", "ca_cert_pem"])
def test_registration_answer_without_token_or_pem_is_refused(missing: str) -> None:
    body = _answer()
    body[missing] = ""
    with pytest.raises(CredentialsError):
        Credentials.from_registration(body)


def test_jwt_without_host_id_is_refused() -> None:
    token = jwt.encode({"typ": "host", "iat": 1, "exp": 2}, "s" * 32, algorithm="HS256")
    with pytest.raises(CredentialsError, match="host_id"):
        Credentials.from_registration(_answer(token))


def test_refresh_keeps_pems_when_the_answer_has_none() -> None:
    creds = Credentials.from_registration(_answer())
    new = creds.refreshed({"token": _token(), "refresh_token": "n" * 64, "cert_pem": ""})
    assert new.refresh_token == "n" * 64 and new.cert_pem == creds.cert_pem
    rotated = creds.refreshed(_answer())
    assert rotated.cert_pem != creds.cert_pem and rotated.key_pem != creds.key_pem


def test_refresh_is_due_at_80_percent_of_the_shorter_lifetime() -> None:
    now = int(time.time())
    creds = Credentials.from_registration(_answer(_token(iat=now, lifetime=10 * DAY)))
    delay = creds.refresh_delay(now)  # the 7-day certificate comes first: 0.8 × 7 days
    assert delay is not None and abs(delay - 0.8 * 7 * DAY) < 120
    short = Credentials.from_registration(_answer(_token(iat=now, lifetime=1000)))
    assert short.refresh_delay(now) == pytest.approx(800, abs=2)
    assert short.refresh_delay(now + 5000) == 0.0  # overdue: at once


def test_credentials_file_is_0600_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "d" / "host-credentials.json"
    creds = Credentials.from_registration(_answer())
    old = os.umask(0)
    try:
        save_credentials(path, creds)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(json.loads(path.read_text())) == {"host_id", "jwt", "refresh_token", "cert_pem", "key_pem",
                                                 "ca_cert_pem"}
    assert load_credentials(path) == creds
    assert [p.name for p in path.parent.iterdir()] == ["host-credentials.json"]  # no temp file left


def test_missing_or_jwt_less_file_means_register(tmp_path: Path) -> None:
    path = tmp_path / "host-credentials.json"
    assert load_credentials(path) is None
    path.write_text(json.dumps({"host_id": "host-abc", "jwt": ""}))
    assert load_credentials(path) is None
    path.write_text(json.dumps({"jwt": _token(), "refresh_token": "x"}))  # PEMs missing
    with pytest.raises(CredentialsError, match="cert_pem"):
        load_credentials(path)
    path.write_text("{not json")
    with pytest.raises(CredentialsError):
        load_credentials(path)


def test_listen_addresses() -> None:
    assert parse_listen(":50051") == ("0.0.0.0", 50051)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:7000") == ("::1", 7000)
    for bad in ("50051", "host:", "x:99999"):
        with pytest.raises(AgentStartError):
            parse_listen(bad)
    assert address_port("10.0.0.5:6000") == 6000 and address_port("10.0.0.5") is None


def test_listen_default_follows_env_then_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WRENN_HOST_LISTEN_ADDR", raising=False)
    assert default_listen("10.0.0.5:6000") == ":6000"
    assert default_listen("") == ":50051"
    monkeypatch.setenv("WRENN_HOST_LISTEN_ADDR", "127.0.0.1:7001")
    assert default_listen("10.0.0.5:6000") == "127.0.0.1:7001"


def test_command_line_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("WRENN_CP_URL", "WRENN_REGISTER_TOKEN", "WRENN_HOST_LISTEN_ADDR", "WRENN_AGENT_PARENT_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WRENN_DIR", str(tmp_path))
    monkeypatch.setenv("WRENN_HEARTBEAT_INTERVAL", "0.25")
    with pytest.raises(AgentStartError, match="cp-url"):
        options_from_args([])
    opts, level = options_from_args(["--cp-url", "http://cp:8080/", "--register", "t", "--address", "10.1.2.3:6001"])
    assert (opts.data_dir, opts.listen, opts.heartbeat_interval) == (tmp_path.resolve(), ":6001", 0.25)
    assert opts.register_token == "t" and level == "info"
    monkeypatch.setenv("WRENN_HEARTBEAT_INTERVAL", "soon")
    with pytest.raises(AgentStartError, match="WRENN_HEARTBEAT_INTERVAL"):
        options_from_args(["--cp-url", "http://cp"])


def test_host_facts_use_go_arch_names() -> None:
    assert (go_arch("x86_64"), go_arch("aarch64"), go_arch("riscv64")) == ("amd64", "arm64", "riscv64")
    facts = host_facts("10.0.0.1:50051")
    assert facts["arch"] in ("amd64", "arm64") and facts["cpu_cores"] >= 1
    assert facts["memory_mb"] > 0 and facts["disk_gb"] > 0 and facts["address"] == "10.0.0.1:50051"
