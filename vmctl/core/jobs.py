"""Durable jobs (docs/architecture.md, "Durable jobs"): what one is, and how a failed job's error
comes back to whoever waits for it as the same typed error (so the same exit code, the same HTTP
status) as when the operation runs in-process."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vmctl.core import errors
from vmctl.core.errors import ExitStatus, VmctlError

KINDS = ("create", "delete", "start", "stop", "reboot", "move")
STATES = ("queued", "running", "succeeded", "failed")


@dataclass(frozen=True)
class Job:
    """One job as vmctl records it (table vmctl_jobs, schema 0011)."""

    id: int
    kind: str  # one of KINDS
    vm: str
    state: str = "queued"
    project: str | None = None
    actor: str | None = None
    attempts: int = 0
    worker: str | None = None
    error: str | None = None
    error_kind: str | None = None
    exit_status: int | None = None
    result: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed")

    def as_dict(self) -> dict[str, Any]:
        def when(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "id": self.id,
            "kind": self.kind,
            "vm": self.vm,
            "state": self.state,
            "project": self.project,
            "attempts": self.attempts,
            "worker": self.worker,
            "result": self.result or None,
            "error": self.error,
            "exit_status": self.exit_status,
            "created_at": when(self.created_at),
            "started_at": when(self.started_at),
            "finished_at": when(self.finished_at),
        }


class JobFailed(VmctlError):
    """A job failed with an error that is not one of vmctl's typed errors; keeps its exit code."""

    def __init__(self, message: str, status: int = ExitStatus.ERROR) -> None:
        super().__init__(message)
        self.exit_status = ExitStatus(status)


def error_of(job: Job) -> VmctlError:
    """The failed job's error, as the typed error that the operation raised in the worker."""
    message = job.error or f"job {job.id} failed"
    cls = getattr(errors, job.error_kind or "", None)
    if isinstance(cls, type) and issubclass(cls, VmctlError):
        if issubclass(cls, errors.InvalidInput):
            name, _, rest = message.partition(": ")
            return cls(name, rest or message)
        try:
            made = cls(message)
        except TypeError:
            pass
        else:
            if isinstance(made, VmctlError):
                return made
    return JobFailed(message, job.exit_status or ExitStatus.ERROR)
