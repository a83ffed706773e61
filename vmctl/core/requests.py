"""What a caller asks for: one request model, built by the CLI and the HTTP API alike and checked
(defaults filled in, every value checked) by the VM service before anything is touched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CreateRequest:
    """A VM to create. ``None`` means "the inventory's default" (ram, cpu, disk, image) or "the
    server's default keys" (authorized_keys); numbers may be text ("1024"), as the prototype's
    API sends them."""

    name: str
    ram_mb: object = None
    cpu: object = None
    disk_gb: object = None
    image: str | None = None
    node: str | None = None
    group: str | None = None
    policy: str = "spread"
    authorized_keys: Sequence[str] | None = None
    user_data: str | None = None
    project: str | None = None
