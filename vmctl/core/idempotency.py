"""Idempotency keys (IETF draft-ietf-httpapi-idempotency-key-header, as Stripe uses them): what a
key may be, the fingerprint of a request, and the answer kept for a key.

A client (or HAProxy, for a POST or DELETE without one) sends ``Idempotency-Key: K`` with a
request that changes something (a create, a delete, a reboot...); the first request with K runs,
and every later one with the same K and the same request gets the first one's answer, unchanged.
The same K with another request (method, path or body) is refused (HTTP 422).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from vmctl.core.errors import InvalidInput

HEADER = "Idempotency-Key"
MAX_KEY = 255  # characters; a UUID has 36
TTL_S = 24 * 3600.0  # how long an answer is kept for its key (Stripe: 24 h)
# How long a request waits for the first one with its key to finish (a create, with its locks,
# ends well within this; HAProxy retries for up to 4 x `timeout server`).
WAIT_S = 300.0
# visible ASCII but '"' and '\' (the draft's sf-string, without its quotes)
_KEY = re.compile(r"[!#-\[\]-~]+")


class KeyReused(InvalidInput):
    """The key was used with another request (other method, path or body): HTTP 422."""

    def __init__(self, key: str) -> None:
        super().__init__(
            HEADER,
            f"{key!r} was used with another request (method, path or body); "
            "use a new key for a new request",
        )


@dataclass(frozen=True)
class Answer:
    """What a request got: its HTTP status and JSON body; ``replayed``: kept from the first
    request with its key."""

    status: int
    body: Any
    replayed: bool = False


@dataclass(frozen=True)
class KeptAnswer:
    """The answer kept for a key, with the fingerprint of the request that got it."""

    fingerprint: str
    status: int
    body: Any


def parse_key(value: str) -> str:
    """The key of an ``Idempotency-Key`` header: 1 to 255 visible ASCII characters, bare
    (``abc-1``) or as the draft's quoted string (``"abc-1"``); InvalidInput (HTTP 400) else."""
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key:
        raise InvalidInput(HEADER, "is empty: send a unique value, e.g. a UUID, or no header")
    if len(key) > MAX_KEY:
        raise InvalidInput(HEADER, f"is {len(key)} characters long: at most {MAX_KEY}")
    if not _KEY.fullmatch(key):
        raise InvalidInput(
            HEADER,
            "may hold only visible ASCII characters (no spaces, quotes or backslashes), "
            "e.g. a UUID",
        )
    return key


def fingerprint(method: str, path: str, payload: Any) -> str:
    """A digest of the request: its method, path and JSON body (keys sorted, so the same body
    written otherwise has the same fingerprint)."""
    text = json.dumps([method.upper(), path, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
