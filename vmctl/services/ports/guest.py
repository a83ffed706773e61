"""The port of a guest: questions asked over SSH, its host key pinned."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# -- a guest ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CloudInit:
    status: str  # "done", "degraded" (finished with recoverable errors) or "error"
    detail: str


class GuestProbe(Protocol):
    """Questions to a guest over SSH, its host key pinned."""

    def host_key(self, ip: str, port: int = 22, timeout: float = 5.0) -> str | None:
        """The server's host key as "TYPE BASE64", or None if SSH does not answer (yet)."""
        ...

    def cloud_init(
        self, ip: str, user: str, key_file: Path, host_key: str, timeout: float
    ) -> CloudInit | None:
        """Log in and wait (up to ``timeout``) for cloud-init to finish: None when it could not
        be asked or did not say; Unavailable when the key is refused."""
        ...
