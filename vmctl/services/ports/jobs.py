"""The job queue: where durable jobs wait for a worker, and what vmctl records of each
(docs/architecture.md, "Durable jobs"). The adapter (vmctl.adapters.jobs) keeps them in
PostgreSQL through procrastinate; unit tests pass a fake."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from vmctl.core.jobs import Job


class JobQueue(Protocol):
    def enqueue(
        self,
        kind: str,
        vm: str,
        args: Mapping[str, Any],
        *,
        project: str | None = None,
        actor: str | None = None,
    ) -> int:
        """Queue a job of ``kind`` about VM ``vm`` (one job per VM runs at a time); its id."""
        ...

    def get(self, job_id: int) -> Job:
        """The job (NotFound for an unknown id)."""
        ...

    def started(self, job_id: int, kind: str, vm: str, worker: str) -> Job:
        """Record that ``worker`` runs the job now (one more attempt); the job as it was
        recorded before (``started_at`` set: an earlier attempt began, and its worker died)."""
        ...

    def live_workers(self, within_s: float) -> int:
        """How many workers sent a heartbeat within the last ``within_s`` seconds."""
        ...

    def succeeded(self, job_id: int, result: Mapping[str, Any]) -> None: ...

    def failed(self, job_id: int, error: str, error_kind: str, exit_status: int) -> None: ...
