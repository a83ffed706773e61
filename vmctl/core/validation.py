"""Checking what users ask for, before anything is touched: pure functions.

Each check raises InvalidInput naming the field, so the CLI exits 2 and the HTTP API answers 4xx
with the same message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from vmctl.core.errors import InvalidInput

NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
LIMITS = {
    "ram": (64, 4 * 1024 * 1024, "MiB"),  # 64 MiB .. 4 TiB
    "cpu": (1, 256, "vCPU"),
    "disk": (1, 65536, "GiB"),  # the data disk; 0 is refused: every VM gets one
    "count": (1, 100, "VMs"),
}


def name(value: str, field: str = "name") -> str:
    """A VM name: a DNS label in lower case (it becomes the guest's hostname)."""
    if not value:
        raise InvalidInput(field, "must not be empty")
    if len(value) > 63:
        raise InvalidInput(field, f"is {len(value)} characters long; at most 63 are allowed")
    if not NAME_RE.fullmatch(value):
        raise InvalidInput(
            field,
            f"{value!r} is not a valid name: use lower-case letters a-z, digits and '-', "
            "starting with a letter and not ending with '-'",
        )
    return value


KEY_TYPES = ("ssh-", "ecdsa-", "sk-")


def public_keys(keys: Sequence[str], field: str = "ssh-key") -> list[str]:
    """OpenSSH public keys ("TYPE BASE64 [COMMENT]"), one a line, at least one."""
    good = []
    for key in keys:
        parts = key.split()
        if len(parts) < 2 or not parts[0].startswith(KEY_TYPES) or "\n" in key.strip():
            shown = key if len(key) <= 40 else key[:37] + "..."
            raise InvalidInput(field, f"{shown!r} is not an OpenSSH public key")
        good.append(key.strip())
    if not good:
        raise InvalidInput(field, "no public key to put into the VM")
    return good


POLICIES = ("spread", "pack")


def policy(value: str) -> str:
    if value not in POLICIES:
        raise InvalidInput("policy", f"must be 'spread' or 'pack', not {value!r}")
    return value


def seconds(field: str, value: float) -> float:
    """A positive, finite number of seconds (a timeout)."""
    if not (isinstance(value, int | float) and 0 < value < float("inf")):
        raise InvalidInput(field, f"must be a positive number of seconds, not {value!r}")
    return float(value)


def integer(field: str, value: object) -> int:
    """An integer within LIMITS[field]; accepts int or a decimal string such as "1024"."""
    low, high, unit = LIMITS[field]
    if isinstance(value, bool):
        raise InvalidInput(field, f"must be a whole number of {unit}, not {value!r}")
    if isinstance(value, str):
        text = value.strip()
        # ASCII digits only, and few enough to be a number at all (int() refuses > 4300)
        if not re.fullmatch(r"[+-]?[0-9]{1,18}", text):
            shown = value if len(value) <= 40 else value[:37] + "..."
            raise InvalidInput(field, f"must be a whole number of {unit}, not {shown!r}")
        number = int(text)
    elif isinstance(value, int):
        number = value
    else:
        raise InvalidInput(field, f"must be a whole number of {unit}, not {value!r}")
    if not low <= number <= high:
        raise InvalidInput(field, f"must be between {low} and {high} {unit}, not {number}")
    return number


_AGO = re.compile(r"([0-9]{1,6})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since(value: str, now: datetime) -> datetime:
    """A point in time: an age (`90s`, `15m`, `2h`, `7d`) before ``now``, or an ISO 8601 time
    (`2026-12-01`, `2026-12-01T10:00:00Z`; UTC unless it says otherwise)."""
    text = value.strip()
    ago = _AGO.fullmatch(text)
    if ago:
        return now - timedelta(seconds=int(ago[1]) * _UNIT_S[ago[2]])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            "since", f"must be an age such as 15m, 2h or 7d, or an ISO time, not {value!r}"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def twice(values: Sequence[str]) -> list[str]:
    """The values that appear more than once, sorted."""
    return sorted({value for value in values if values.count(value) > 1})


def listen_address(field: str, value: str) -> tuple[str, int]:
    """HOST:PORT to listen on ("[::1]:9469" for IPv6; port 0: any free port)."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidInput(field, f"{value!r} is not HOST:PORT (for example 127.0.0.1:9469)")
    return host, int(port)
