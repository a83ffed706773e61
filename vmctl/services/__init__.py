"""The services: vmctl's operations, over the ports of ``vmctl.services.ports``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vmctl.services.idempotency import IdempotencyService

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
    # requests with an Idempotency-Key (by default over the VM service's store)
    idempotency: IdempotencyService = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.idempotency is None:
            self.idempotency = IdempotencyService(self.vms.store)
