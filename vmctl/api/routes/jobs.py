"""Durable jobs over HTTP (docs/api.md, "Jobs"): the async form of `POST /api/v1/vm`,
`DELETE /api/v1/vm/{name}` and `POST /api/v1/vm/{name}/start|stop|reboot` (header
`Prefer: respond-async`, RFC 7240) answers 202 with the job and `Location: /api/v1/jobs/{id}`;
`GET /api/v1/jobs/{id}` tells its state, result or error (only the caller's project's jobs).
Without that header they answer as the seed did (201, 204, 200): in-process, or, when the
server is told to use the queue (setting ``queue``), by queueing and waiting for the job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path
from pydantic import BaseModel, Field

from vmctl.api.deps import Project, Svc
from vmctl.api.errors import ERRORS
from vmctl.core.errors import Unavailable
from vmctl.core.jobs import Job
from vmctl.core.records import VmRecord
from vmctl.core.requests import CreateRequest
from vmctl.services import Services
from vmctl.services.jobs import JobService

router = APIRouter(prefix="/api/v1", responses=ERRORS)

MAX_ID = 2**63 - 1


class JobOut(BaseModel):
    id: int
    kind: str = Field(
        description="create, delete, start, stop, reboot or move (queued by `vmctl move --queue`)"
    )
    vm: str
    state: str = Field(description="queued, running, succeeded or failed")
    attempts: int = Field(description="runs begun (more than one: a worker died mid-way)")
    result: dict[str, Any] | None = Field(description="what a succeeded job made")
    error: str | None = Field(description="why a failed job failed")
    created_at: str | None
    started_at: str | None
    finished_at: str | None


def job_out(job: Job) -> dict[str, Any]:
    d = job.as_dict()
    return {k: d[k] for k in JobOut.model_fields}


PreferHeader = Annotated[
    str | None,
    Header(
        description="`respond-async`: queue the operation and answer 202 with the job at once "
        "(RFC 7240); without it, the answer once it is done",
        examples=["respond-async"],
    ),
]

ASYNC_RESPONSE: dict[int | str, dict[str, Any]] = {
    202: {
        "model": JobOut,
        "description": "Queued (Prefer: respond-async): the job; follow Location",
        "headers": {
            "Location": {"description": "/api/v1/jobs/{id}", "schema": {"type": "string"}},
            "Preference-Applied": {"schema": {"type": "string"}},
        },
    }
}


def accepted_headers(job_id: int) -> dict[str, str]:
    """The headers of a 202: where the job is, and that the preference was applied."""
    return {"Location": f"/api/v1/jobs/{job_id}", "Preference-Applied": "respond-async"}


def wants_async(prefer: str | None) -> bool:
    """Whether the Prefer header (RFC 7240: comma-separated, each with ;parameters) asks for
    respond-async."""
    if prefer is None:
        return False
    return any(p.split(";")[0].strip().lower() == "respond-async" for p in prefer.split(","))


def _jobs(svc: Services) -> JobService:
    if svc.jobs is None:
        raise Unavailable("this server has no job queue")
    return svc.jobs


def _queued(
    svc: Services,
    prefer: str | None,
    submit: Callable[[JobService], int],
    direct: Callable[[], VmRecord | None],
) -> VmRecord | dict[str, Any] | None:
    """With `Prefer: respond-async`, the job ``submit`` queues (Unavailable without a queue);
    with the setting ``queue``, what its job left once done; else ``direct()``."""
    if wants_async(prefer):
        jobs = _jobs(svc)
        return job_out(jobs.get(submit(jobs)))
    if svc.use_queue and svc.jobs is not None:
        return svc.jobs.run_and_wait(submit(svc.jobs))
    return direct()


def create(svc: Services, req: CreateRequest, prefer: str | None) -> VmRecord | dict[str, Any]:
    """`POST /api/v1/vm`: the VM (201), or with `Prefer: respond-async` the job queued (202,
    with ``accepted_headers``)."""
    made = _queued(svc, prefer, lambda jobs: jobs.submit_create(req), lambda: svc.vms.create(req))
    assert made is not None
    return made


def delete(svc: Services, name: str, project: str, prefer: str | None) -> dict[str, Any] | None:
    """`DELETE /api/v1/vm/{name}`: None once deleted (204), or with `Prefer: respond-async` the
    job queued (202). Another project's VM is NotFound, and nothing is queued."""
    if wants_async(prefer):
        _jobs(svc)  # Unavailable before anything else
    vm = svc.vms.get_in_project(name, project)
    done = _queued(
        svc,
        prefer,
        lambda jobs: jobs.submit_delete(vm.name, project),
        lambda: svc.vms.delete(vm.name),
    )
    assert not isinstance(done, VmRecord)
    return done


def lifecycle(
    svc: Services,
    kind: str,
    name: str,
    project: str,
    prefer: str | None,
    timeout: float = 60.0,
    force: bool = False,
) -> VmRecord | dict[str, Any]:
    """`POST /api/v1/vm/{name}/start|stop|reboot`: the VM after it (200), or with
    `Prefer: respond-async` the job queued (202). Another project's VM is NotFound, and nothing
    is queued."""
    if wants_async(prefer):
        _jobs(svc)
    vm = svc.vms.get_in_project(name, project)

    def direct() -> VmRecord:
        if kind == "start":
            return svc.vms.start(vm.name)
        if kind == "stop":
            return svc.vms.stop(vm.name, timeout, force)
        return svc.vms.reboot(vm.name, force)

    done = _queued(
        svc, prefer, lambda jobs: jobs.submit_lifecycle(kind, vm.name, timeout, force), direct
    )
    assert done is not None
    return done


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(
    job_id: Annotated[int, Path(ge=1, le=MAX_ID)], project: Project, svc: Svc
) -> dict[str, Any]:
    """A job of the caller's project: state, attempts, result or error (404 for another's)."""
    return job_out(_jobs(svc).get(job_id, project=project))
