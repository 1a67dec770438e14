"""The agent's credentials file and the host facts it reports at registration (hostagent-wire.md §9.1-§9.3).

``<data-dir>/host-credentials.json`` (mode 0600) holds exactly the reference agent's fields:
``{host_id, jwt, refresh_token, cert_pem, key_pem, ca_cert_pem}``, so a data dir can move between
this agent and the reference one. ``host_id`` is read from the JWT payload without verifying the
signature (the agent does not know the CP's secret); the CP is the one that verifies it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509

CREDENTIALS_FILE = "host-credentials.json"
PEM_FIELDS = ("cert_pem", "key_pem", "ca_cert_pem")
REFRESH_AT = 0.8  # refresh when 80 % of the JWT's (or the certificate's) lifetime has passed

# platform.machine() → the Go runtime's GOARCH, which the CP stores as ``hosts.arch``
_GO_ARCH = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
    "i386": "386", "i686": "386", "armv7l": "arm", "armv6l": "arm",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}


class CredentialsError(RuntimeError):
    """The credentials file or a CP answer cannot be used (the message says why)."""


def jwt_claims(token: str) -> dict[str, Any]:
    """The JWT payload, unverified (only the CP can verify it)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise CredentialsError(f"host token is not a JWT: {exc}") from exc
    if not isinstance(claims, dict):
        raise CredentialsError("host token payload is not an object")
    return claims


@dataclass(frozen=True)
class Credentials:
    host_id: str
    jwt: str
    refresh_token: str
    cert_pem: str
    key_pem: str
    ca_cert_pem: str

    @classmethod
    def from_registration(cls, body: dict[str, Any]) -> Credentials:
        """From a register answer (201): token, refresh token and all three PEMs are required."""
        token = _text(body, "token")
        if not token:
            raise CredentialsError("registration answer has no token")
        host_id = str(jwt_claims(token).get("host_id") or "")
        if not host_id:
            raise CredentialsError("host token has no host_id claim")
        creds = cls(host_id, token, _text(body, "refresh_token"), *(_text(body, f) for f in PEM_FIELDS))
        creds.check()
        return creds

    def refreshed(self, body: dict[str, Any]) -> Credentials:
        """After a refresh answer (200): new JWT and refresh token; new PEMs only if ``cert_pem`` is set."""
        token = _text(body, "token")
        if not token:
            raise CredentialsError("refresh answer has no token")
        new = replace(self, jwt=token, refresh_token=_text(body, "refresh_token") or self.refresh_token)
        if _text(body, "cert_pem"):
            new = replace(new, **{f: _text(body, f) for f in PEM_FIELDS})
        new.check()
        return new

    def check(self) -> None:
        missing = [f for f in ("host_id", "jwt", *PEM_FIELDS) if not getattr(self, f)]
        if missing:
            raise CredentialsError(f"credentials lack {', '.join(missing)} (mTLS is mandatory)")

    def refresh_delay(self, now: float) -> float | None:
        """Seconds until the proactive refresh: 80 % into the JWT's or the certificate's lifetime,
        whichever comes first; ``None`` when neither carries usable times."""
        due = [t for t in (_jwt_due(self.jwt), _cert_due(self.cert_pem)) if t is not None]
        return max(0.0, min(due) - now) if due else None


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    return value if isinstance(value, str) else ""


def _due(start: float, end: float) -> float | None:
    return start + REFRESH_AT * (end - start) if end > start else None


def _jwt_due(token: str) -> float | None:
    try:
        claims = jwt_claims(token)
        return _due(float(claims["iat"]), float(claims["exp"]))
    except (CredentialsError, KeyError, TypeError, ValueError):
        return None


def _cert_due(cert_pem: str) -> float | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        return None
    start = cert.not_valid_before_utc + dt.timedelta(minutes=1)  # the CP backdates by one minute
    return _due(start.timestamp(), cert.not_valid_after_utc.timestamp())


# ---------------------------------------------------------------- the file


def credentials_path(data_dir: Path) -> Path:
    return Path(data_dir) / CREDENTIALS_FILE


def load_credentials(path: Path) -> Credentials | None:
    """``None`` when the file is missing or has no JWT (the caller asks for ``--register``)."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict) or not raw.get("jwt"):
        return None
    fields = {k: str(raw.get(k) or "") for k in Credentials.__dataclass_fields__}
    if not fields["host_id"]:
        fields["host_id"] = str(jwt_claims(fields["jwt"]).get("host_id") or "")
    creds = Credentials(**fields)
    creds.check()
    return creds


def save_credentials(path: Path, creds: Credentials) -> None:
    """Atomic write, mode 0600 from the start (never briefly readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(creds), fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def delete_credentials(path: Path) -> None:
    path.unlink(missing_ok=True)


# ---------------------------------------------------------------- host facts


def go_arch(machine: str | None = None) -> str:
    machine = (machine or platform.machine()).lower()
    return _GO_ARCH.get(machine, machine)


def memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (OSError, ValueError):
        return 0


def disk_gb(path: str = "/") -> int:
    return shutil.disk_usage(path).total // (1 << 30)


def host_facts(address: str) -> dict[str, Any]:
    """The registration body minus the token: arch (Go naming), CPUs, RAM, root fs size, address."""
    return {
        "arch": go_arch(),
        "cpu_cores": os.cpu_count() or 1,
        "memory_mb": memory_mb(),
        "disk_gb": disk_gb("/"),
        "address": address,
    }
