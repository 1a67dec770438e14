"""Channel config at rest: each value AES-256-GCM encrypted separately (control-plane.md §14.2).

Stored as standard base64 of ``nonce (12) ‖ ciphertext ‖ tag (16)``, no associated data; the key is
``WRENN_ENCRYPTION_KEY`` (64 hex characters = 32 bytes)."""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_LEN = 12


class ConfigDecryptError(ValueError):
    """A stored value does not decrypt with the configured key."""


def _aead(key_hex: str) -> AESGCM:
    key = bytes.fromhex(key_hex)
    if len(key) != 32:
        raise ValueError("WRENN_ENCRYPTION_KEY must be 64 hex characters")
    return AESGCM(key)


def encrypt_value(key_hex: str, plaintext: str) -> str:
    nonce = os.urandom(NONCE_LEN)
    return base64.b64encode(nonce + _aead(key_hex).encrypt(nonce, plaintext.encode(), None)).decode()


def decrypt_value(key_hex: str, stored: str) -> str:
    try:
        raw = base64.b64decode(stored, validate=True)
        return _aead(key_hex).decrypt(raw[:NONCE_LEN], raw[NONCE_LEN:], None).decode()
    except (InvalidTag, binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ConfigDecryptError("channel config does not decrypt with WRENN_ENCRYPTION_KEY") from exc


def encrypt_config(key_hex: str, config: dict[str, str]) -> dict[str, str]:
    return {k: encrypt_value(key_hex, v) for k, v in config.items()}


def decrypt_config(key_hex: str, stored: dict[str, str]) -> dict[str, str]:
    return {k: decrypt_value(key_hex, v) for k, v in stored.items()}
