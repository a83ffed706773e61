"""Durable jobs over HTTP (docs/api.md, "Jobs"): the async form of `POST /api/v1/vm` (header
`Prefer: respond-async`, RFC 7240) answers 202 with the job and `Location: /api/v1/jobs/{id}`;
`GET /api/v1/jobs/{id}` tells its state, result or error (only the caller's project's jobs).
Without that header, `POST /api/v1/vm` answers 201 as the seed did: it creates in-process, or,
when the server is told to use the queue (setting ``queue``), queues and waits for the job."""

from __future__ import annotations

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
    kind: str = Field(description="create or delete")
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
        description="`respond-async`: queue the create and answer 202 with the job at once "
        "(RFC 7240); without it, 201 once the VM exists",
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


def create(svc: Services, req: CreateRequest, prefer: str | None) -> VmRecord | dict[str, Any]:
    """`POST /api/v1/vm`: the VM (201), or with `Prefer: respond-async` the job queued (202,
    with ``accepted_headers``)."""
    if wants_async(prefer):
        jobs = _jobs(svc)
        return job_out(jobs.get(jobs.submit_create(req)))
    if svc.use_queue and svc.jobs is not None:
        vm = svc.jobs.run_and_wait(svc.jobs.submit_create(req))
        assert vm is not None
        return vm
    return svc.vms.create(req)


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(
    job_id: Annotated[int, Path(ge=1, le=MAX_ID)], project: Project, svc: Svc
) -> dict[str, Any]:
    """A job of the caller's project: state, attempts, result or error (404 for another's)."""
    return job_out(_jobs(svc).get(job_id, project=project))
