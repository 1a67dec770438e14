"""mTLS between the CP client and the agent server: certificates, handshake rules, hot swap.

Real uvicorn agent on 127.0.0.1; the runtime is a trivial stub (only ListSandboxes is used).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.hostagent import tls
from app.hostagent.client import AgentClient, AgentError
from app.hostagent.server import AgentThread, build_agent_app


class StubRuntime:
    async def list_sandboxes(self) -> list:
        return []

    def drain_auto_paused(self) -> list[str]:
        return []

    def proxy_target(self, sandbox_id: str, port: int) -> tuple[str, int]:
        raise LookupError(sandbox_id)


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


# ---------------------------------------------------------------- certificate contents


def test_host_certificate_fields() -> None:
    ca = tls.generate_ca()
    issued = tls.issue_host_cert(ca, "host-abc", "10.0.0.5:50051")
    cert = _cert(issued.cert_pem)
    now = dt.datetime.now(dt.UTC)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "host-abc"
    assert cert.issuer == ca.cert.subject
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert abs((cert.not_valid_before_utc - (now - dt.timedelta(minutes=1))).total_seconds()) < 5
    assert abs((cert.not_valid_after_utc - (now + dt.timedelta(days=7))).total_seconds()) < 5
    assert issued.expires_at == cert.not_valid_after_utc
    assert 0 < cert.serial_number < 2**128
    assert issued.fingerprint == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert issued.key_pem.startswith("-----BEGIN EC PRIVATE KEY-----")
    assert issued.ca_cert_pem == ca.cert_pem
    assert tls.issue_host_cert(ca, "host-abc", "10.0.0.5:50051").cert_pem != issued.cert_pem


def test_san_forms() -> None:
    ca = tls.generate_ca()
    dns = _cert(tls.issue_host_cert(ca, "host-a", "agent.example.com:50051").cert_pem)
    san = dns.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["agent.example.com"]
    for addr, host in [("[::1]:50051", "::1"), ("https://10.1.2.3:9", "10.1.2.3"), ("10.1.2.3", "10.1.2.3")]:
        assert tls.address_host(addr) == host


def test_client_certificate_fields() -> None:
    ca = tls.generate_ca()
    issued = tls.issue_client_cert(ca)
    cert = _cert(issued.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "wrenn-cp"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(hours=24, minutes=1)


def test_load_ca_accepts_escaped_newlines_and_rejects_mismatch() -> None:
    ca = tls.generate_ca()
    escaped_cert = ca.cert_pem.replace("\n", "\\n")
    escaped_key = ca.key_pem.replace("\n", "\\n")
    assert ca.key_pem.startswith("-----BEGIN EC PRIVATE KEY-----")
    loaded = tls.load_ca(escaped_cert, escaped_key)
    assert loaded.cert == ca.cert
    with pytest.raises(tls.TLSConfigError):
        tls.load_ca(ca.cert_pem, tls.generate_ca().key_pem)
    with pytest.raises(tls.TLSConfigError):
        tls.load_ca("garbage", ca.key_pem)


def test_private_key_files_are_0600_and_removed() -> None:
    with tls._private_files(key="secret") as paths:
        path = paths["key"]
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert not os.path.exists(path)


def test_contexts_are_tls13_only() -> None:
    ca = tls.generate_ca()
    cli = tls.issue_client_cert(ca)
    ctx = tls.client_ssl_context(ca.cert_pem, cli.cert_pem, cli.key_pem)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert len(ctx.get_ca_certs()) == 1  # only the CA, not the system store


# ---------------------------------------------------------------- handshakes against a real agent


@pytest.fixture(scope="module")
def ca() -> tls.CertificateAuthority:
    return tls.generate_ca()


@pytest.fixture(scope="module")
def server_tls(ca: tls.CertificateAuthority) -> tls.ServerTLS:
    host = tls.issue_host_cert(ca, "host-tls", "127.0.0.1:50051")
    return tls.ServerTLS(host.cert_pem, host.key_pem, host.ca_cert_pem)


@pytest.fixture(scope="module")
def agent(server_tls: tls.ServerTLS) -> Iterator[AgentThread]:
    thread = AgentThread(build_agent_app(StubRuntime()), server_tls.context).start()  # type: ignore[arg-type]
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def holder(ca: tls.CertificateAuthority) -> tls.ClientCertHolder:
    return tls.ClientCertHolder(ca)


@pytest.fixture
async def client(agent: AgentThread, holder: tls.ClientCertHolder) -> AsyncIterator[AgentClient]:
    c = AgentClient(agent.address, holder)
    yield c
    await c.aclose()


async def _call_with(agent: AgentThread, ctx: ssl.SSLContext) -> None:
    c = AgentClient(agent.address, lambda: ctx)
    try:
        await c.list_sandboxes()
    finally:
        await c.aclose()


def _handshake(agent: AgentThread, ctx: ssl.SSLContext, server_hostname: str = "127.0.0.1") -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", agent.port), timeout=5)
    tsock = ctx.wrap_socket(sock, server_hostname=server_hostname)
    # TLS 1.3: a rejected client certificate surfaces on the first read, not in the handshake.
    tsock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return tsock


def _response_or_refusal(agent: AgentThread, ctx: ssl.SSLContext) -> bytes:
    """The HTTP response bytes, or b"" if the server refused the connection at the TLS level."""
    try:
        with _handshake(agent, ctx) as tsock:
            return _read_all(tsock)
    except (ssl.SSLError, ConnectionError):
        return b""


def _read_all(tsock: ssl.SSLSocket) -> bytes:
    data = b""
    while chunk := tsock.recv(65536):
        data += chunk
    return data


async def test_valid_client_works_over_http11(client: AgentClient, agent: AgentThread, holder) -> None:
    await client.list_sandboxes()
    with _handshake(agent, holder()) as tsock:
        assert tsock.version() == "TLSv1.3"
        assert tsock.selected_alpn_protocol() == "http/1.1"
        assert _read_all(tsock).startswith(b"HTTP/1.1 404")


async def test_client_without_certificate_is_refused(agent: AgentThread, ca: tls.CertificateAuthority) -> None:
    ctx = tls._base_context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.cert_pem)
    with pytest.raises(AgentError) as exc:
        await _call_with(agent, ctx)
    assert exc.value.code == "unavailable"
    assert _response_or_refusal(agent, ctx) == b""


async def test_certificate_from_another_ca_is_refused(agent: AgentThread, ca: tls.CertificateAuthority) -> None:
    other = tls.issue_client_cert(tls.generate_ca())
    ctx = tls.client_ssl_context(ca.cert_pem, other.cert_pem, other.key_pem)
    with pytest.raises(AgentError) as exc:
        await _call_with(agent, ctx)
    assert exc.value.code == "unavailable"


async def test_server_auth_certificate_is_not_a_client_certificate(
    agent: AgentThread, ca: tls.CertificateAuthority
) -> None:
    wrong = tls.issue_host_cert(ca, "host-x", "127.0.0.1:1")  # chains to the CA but EKU serverAuth
    ctx = tls.client_ssl_context(ca.cert_pem, wrong.cert_pem, wrong.key_pem)
    with pytest.raises(AgentError):
        await _call_with(agent, ctx)


async def test_tls12_is_refused(agent: AgentThread, ca: tls.CertificateAuthority) -> None:
    cli = tls.issue_client_cert(ca)
    ctx = tls.client_ssl_context(ca.cert_pem, cli.cert_pem, cli.key_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        _handshake(agent, ctx).close()
    with pytest.raises(AgentError):
        await _call_with(agent, ctx)


async def test_client_rejects_server_from_other_ca(holder: tls.ClientCertHolder) -> None:
    other_ca = tls.generate_ca()
    host = tls.issue_host_cert(other_ca, "host-evil", "127.0.0.1:1")
    evil = AgentThread(
        build_agent_app(StubRuntime()),  # type: ignore[arg-type]
        tls.server_ssl_context(host.cert_pem, host.key_pem, other_ca.cert_pem),
    ).start()
    try:
        c = AgentClient(evil.address, holder)
        with pytest.raises(AgentError) as exc:
            await c.list_sandboxes()
        assert exc.value.code == "unavailable" and "CERTIFICATE_VERIFY_FAILED" in exc.value.message
        await c.aclose()
    finally:
        evil.stop()


async def test_ip_san_is_checked(ca: tls.CertificateAuthority, holder: tls.ClientCertHolder) -> None:
    host = tls.issue_host_cert(ca, "host-elsewhere", "10.9.9.9:50051")  # valid chain, wrong IP
    wrong = AgentThread(
        build_agent_app(StubRuntime()),  # type: ignore[arg-type]
        tls.server_ssl_context(host.cert_pem, host.key_pem, ca.cert_pem),
    ).start()
    try:
        c = AgentClient(wrong.address, holder)
        with pytest.raises(AgentError) as exc:
            await c.list_sandboxes()
        assert "IP address mismatch" in exc.value.message or "mismatch" in exc.value.message
        await c.aclose()
    finally:
        wrong.stop()


async def test_server_certificate_hot_swap(
    agent: AgentThread, server_tls: tls.ServerTLS, ca: tls.CertificateAuthority, holder, client: AgentClient
) -> None:
    await client.list_sandboxes()  # a pooled connection with the old certificate
    with _handshake(agent, holder()) as tsock:
        old_serial = x509.load_der_x509_certificate(tsock.getpeercert(binary_form=True)).serial_number
    fresh = tls.issue_host_cert(ca, "host-tls", "127.0.0.1:50051")
    server_tls.update(fresh.cert_pem, fresh.key_pem, fresh.ca_cert_pem)
    with _handshake(agent, holder()) as tsock:
        new_cert = x509.load_der_x509_certificate(tsock.getpeercert(binary_form=True))
    assert new_cert.serial_number != old_serial
    assert tls.fingerprint(new_cert) == fresh.fingerprint
    await client.list_sandboxes()  # the existing keep-alive connection still works
    # The swapped-in context still requires a client certificate.
    bare = tls._base_context(ssl.PROTOCOL_TLS_CLIENT)
    bare.load_verify_locations(cadata=ca.cert_pem)
    with pytest.raises(AgentError):
        await _call_with(agent, bare)


async def test_client_certificate_renewal_uses_new_pool(agent: AgentThread, ca: tls.CertificateAuthority) -> None:
    holder = tls.ClientCertHolder(ca)
    c = AgentClient(agent.address, holder)
    await c.list_sandboxes()
    first = holder.cert.fingerprint
    holder.renew()
    assert holder.cert.fingerprint != first
    await c.list_sandboxes()
    assert c._pool is not None and c._pool.ctx is holder()
    assert c._old == []  # the retired pool was idle: closed at once
    await c.aclose()
