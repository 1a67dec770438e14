"""mTLS material between the control plane and host agents (hostagent-wire.md §2, control-plane.md §4.7).

* The CA (ECDSA P-256, SEC1 key) is given to the CP as PEM; it signs a 7-day server certificate for each
  host at register/refresh and a 24-hour client certificate for the CP itself (renewed every 12 h).
* Both sides speak TLS 1.3 only, HTTP/1.1 only (ALPN ``http/1.1``), and trust only the CA.

The standard library loads key material only from files, so PEMs are written to a private directory
(0700, files 0600), loaded and deleted at once.

Server certificate hot swap: the context handed to the listener never changes, but its ``sni_callback``
(OpenSSL calls it for every ClientHello, with or without SNI) moves each new connection onto the most
recent context. Refreshing the host certificate therefore needs no listener restart, and already open
connections keep the certificate they were opened with.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST_CERT_VALIDITY = dt.timedelta(days=7)
CLIENT_CERT_VALIDITY = dt.timedelta(hours=24)
CLIENT_CERT_RENEW_EVERY = dt.timedelta(hours=12)
BACKDATE = dt.timedelta(minutes=1)
CP_CLIENT_CN = "wrenn-cp"
ALPN = ["http/1.1"]


class TLSConfigError(ValueError):
    """Malformed or unusable PEM material."""


# ---------------------------------------------------------------- PEM helpers


def normalize_pem(pem: str) -> str:
    """Accept PEMs whose newlines were written as the two characters ``\\n`` (env variables)."""
    text = pem.strip().replace("\\r\\n", "\n").replace("\\n", "\n").replace("\r\n", "\n")
    return text + "\n"


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    # SEC1 ("EC PRIVATE KEY"), as the reference agent and CA expect.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


def fingerprint(cert: x509.Certificate | str) -> str:
    """Hex SHA-256 of the certificate's DER (``hosts.cert_fingerprint``)."""
    if isinstance(cert, str):
        cert = x509.load_pem_x509_certificate(normalize_pem(cert).encode())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# ---------------------------------------------------------------- CA


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> str:
        return _cert_pem(self.cert)

    @property
    def key_pem(self) -> str:
        return _key_pem(self.key)


def load_ca(cert_pem: str, key_pem: str) -> CertificateAuthority:
    """Parse ``WRENN_CA_CERT`` / ``WRENN_CA_KEY`` (real or escaped newlines)."""
    try:
        cert = x509.load_pem_x509_certificate(normalize_pem(cert_pem).encode())
        key = serialization.load_pem_private_key(normalize_pem(key_pem).encode(), password=None)
    except ValueError as exc:
        raise TLSConfigError(f"invalid CA PEM: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise TLSConfigError("CA key must be ECDSA P-256")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TLSConfigError("CA key does not match the CA certificate")
    return CertificateAuthority(cert, key)


def generate_ca(common_name: str = "wrenn-ca", days: int = 3650) -> CertificateAuthority:
    """A fresh self-signed CA (for first setup and tests)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


# ---------------------------------------------------------------- leaf certificates


@dataclass(frozen=True)
class IssuedCert:
    cert_pem: str
    key_pem: str
    ca_cert_pem: str
    fingerprint: str
    expires_at: dt.datetime  # aware UTC


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _serial() -> int:
    return secrets.randbits(128) or 1


def _key_usage(cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def address_host(address: str) -> str:
    """The host part of ``ip:port``, ``[v6]:port``, a bare IP/name, or an ``http(s)://`` URL."""
    addr = address.strip()
    for scheme in ("https://", "http://"):
        if addr.startswith(scheme):
            addr = addr[len(scheme) :]
    addr = addr.split("/", 1)[0]
    if addr.startswith("["):
        return addr[1 : addr.index("]")]
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(addr)  # a bare IPv6 address has several colons
        return addr
    return addr.rsplit(":", 1)[0] if ":" in addr else addr


def san_for_address(address: str) -> x509.GeneralName:
    host = address_host(address)
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _issue(
    ca: CertificateAuthority,
    common_name: str,
    eku: x509.ObjectIdentifier,
    validity: dt.timedelta,
    san: x509.GeneralName | None,
) -> IssuedCert:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    expires = now + validity
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(expires)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return IssuedCert(_cert_pem(cert), _key_pem(key), ca.cert_pem, fingerprint(cert), expires)


def issue_host_cert(ca: CertificateAuthority, host_id: str, address: str) -> IssuedCert:
    """Agent server certificate: CN = host ID, EKU serverAuth, SAN from the registered address, 7 days."""
    return _issue(ca, host_id, ExtendedKeyUsageOID.SERVER_AUTH, HOST_CERT_VALIDITY, san_for_address(address))


def issue_client_cert(ca: CertificateAuthority, common_name: str = CP_CLIENT_CN) -> IssuedCert:
    """CP client certificate: CN ``wrenn-cp``, EKU clientAuth, 24 hours."""
    return _issue(ca, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, CLIENT_CERT_VALIDITY, None)


# ---------------------------------------------------------------- SSL contexts


@contextlib.contextmanager
def _private_files(**pems: str) -> Iterator[dict[str, str]]:
    """Write PEMs to 0600 files in a 0700 directory that disappears after use."""
    tmpdir = tempfile.mkdtemp(prefix="wrenn-tls-")  # mkdtemp creates it 0700
    try:
        paths = {}
        for name, pem in pems.items():
            path = os.path.join(tmpdir, name + ".pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(normalize_pem(pem))
            paths[name] = path
        yield paths
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _base_context(purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(ALPN)
    return ctx


def _load(ctx: ssl.SSLContext, cert_pem: str, key_pem: str, ca_cert_pem: str) -> ssl.SSLContext:
    try:
        ctx.load_verify_locations(cadata=normalize_pem(ca_cert_pem))
        with _private_files(cert=cert_pem, key=key_pem) as paths:
            ctx.load_cert_chain(paths["cert"], paths["key"])
    except (ssl.SSLError, ValueError) as exc:
        raise TLSConfigError(f"cannot load TLS material: {exc}") from exc
    return ctx


def server_ssl_context(cert_pem: str, key_pem: str, ca_cert_pem: str) -> ssl.SSLContext:
    """Agent listener: TLS 1.3+, client certificate required and chained to the CA."""
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return _load(ctx, cert_pem, key_pem, ca_cert_pem)


def client_ssl_context(ca_cert_pem: str, cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """CP → agent: TLS 1.3+, the CA as the only trust anchor, host name/IP checked, client cert."""
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname by default
    return _load(ctx, cert_pem, key_pem, ca_cert_pem)


class ServerTLS:
    """The agent's listener context, whose certificate can be replaced while serving."""

    def __init__(self, cert_pem: str, key_pem: str, ca_cert_pem: str) -> None:
        self.context = server_ssl_context(cert_pem, key_pem, ca_cert_pem)
        self._current = self.context
        self.context.sni_callback = self._select

    def _select(self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
        current = self._current
        if current is not self.context:
            sock.context = current

    def update(self, cert_pem: str, key_pem: str, ca_cert_pem: str) -> None:
        """Serve new material to every later handshake (after a certificate refresh)."""
        self._current = server_ssl_context(cert_pem, key_pem, ca_cert_pem)


class ClientCertHolder:
    """The CP's client certificate and context; re-issued every 12 h for new handshakes.

    ``context()`` returns the same object until a renewal, so callers can cache per-context state
    (an HTTP client pool) and rebuild it when the object changes.
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        renew_every: dt.timedelta = CLIENT_CERT_RENEW_EVERY,
    ) -> None:
        self._ca = ca
        self._renew_every = renew_every.total_seconds()
        self._lock = threading.Lock()
        self.cert: IssuedCert
        self._ctx: ssl.SSLContext
        self._issued_at = 0.0
        self.renew()

    def renew(self) -> ssl.SSLContext:
        cert = issue_client_cert(self._ca)
        ctx = client_ssl_context(self._ca.cert_pem, cert.cert_pem, cert.key_pem)
        with self._lock:
            self.cert, self._ctx, self._issued_at = cert, ctx, time.monotonic()
        return ctx

    def context(self) -> ssl.SSLContext:
        if time.monotonic() - self._issued_at >= self._renew_every:
            return self.renew()
        return self._ctx

    __call__ = context
