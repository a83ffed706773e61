"""Secrets vmctl hands out: API bearer tokens and the per-VM phone-home secret.

Both are 256-bit random strings; only their SHA-256 is stored (a fast hash is enough for secrets
of that size: there is nothing to guess), and they are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_PREFIX = "vmctl_"


def new_secret(prefix: str = "") -> tuple[str, str]:
    """A new secret and the hash to store."""
    secret = prefix + secrets.token_urlsafe(32)
    return secret, digest(secret)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str, stored_hash: str | None) -> bool:
    return stored_hash is not None and hmac.compare_digest(digest(secret), stored_hash)
