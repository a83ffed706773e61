"""The services: vmctl's operations, over the ports of ``vmctl.services.ports``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmctl.services.jobs import JobService
    from vmctl.services.tokens import TokenService
    from vmctl.services.vms import VmService


@dataclass
class Services:
    """What the HTTP API (one per worker thread) and the CLI call."""

    vms: VmService
    tokens: TokenService
    jobs: JobService | None = None  # None: no job queue (async requests are refused)
    use_queue: bool = False  # creates go through the queue (setting ``queue``)
