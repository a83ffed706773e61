"""/api/v1/vm/{name}/start|stop|reboot|resize, its events and its console log: the day-2 verbs
of the CLI, for one project's VMs. A VM another operation holds answers 409 (busy). Each verb
honours an Idempotency-Key; start, stop and reboot have the async form (Prefer: respond-async:
202 and the job) and go through the queue with the server setting ``queue``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from vmctl.api import idempotent
from vmctl.api.deps import Project, Svc
from vmctl.api.errors import ERRORS
from vmctl.api.idempotent import Call, Keyed
from vmctl.api.models import VmDetail, vm_detail
from vmctl.api.routes import jobs
from vmctl.core.records import VmRecord

router = APIRouter(prefix="/api/v1/vm/{name}", responses=ERRORS, tags=["day 2"])


class StopIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout: float = Field(default=60, gt=0, description="seconds the guest gets to shut down")
    force: bool = Field(default=False, description="power off if it has not stopped by then")


class RebootIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = Field(default=False, description="reset at once instead of asking the guest")


class ResizeIn(BaseModel):
    """New sizes for a stopped VM (the data disk only grows); the prototype's key style."""

    model_config = ConfigDict(extra="forbid")

    RAM: str | StrictInt | None = Field(default=None, description="MiB", examples=["768"])
    CPU: str | StrictInt | None = Field(default=None, examples=["2"])
    Disk: str | StrictInt | None = Field(default=None, description="GiB", examples=["20"])


class EventOut(BaseModel):
    id: int
    at: datetime
    vm: str | None
    node: str | None
    actor: str
    action: str
    result: str
    detail: dict[str, Any]


def _day2(
    call: Call,
    payload: Any,
    work: Callable[[], VmRecord | dict[str, Any]],
    prefer: str | None = None,
) -> Response:
    """The VM after ``work`` (200), or the job it queued (202), once per Idempotency-Key."""

    def answer() -> tuple[int, Any]:
        done = work()
        return (202, done) if isinstance(done, dict) else (200, vm_detail(done))

    return call.answer(payload, answer, prefer)


@router.post("/start", response_model=VmDetail, responses=idempotent.responses(200, True))
def start_vm(name: str, call: Keyed, prefer: jobs.PreferHeader = None) -> Response:
    work = partial(jobs.lifecycle, call.svc, "start", name, call.project, prefer)
    return _day2(call, None, work, prefer)


@router.post("/stop", response_model=VmDetail, responses=idempotent.responses(200, True))
def stop_vm(
    name: str, call: Keyed, body: StopIn | None = None, prefer: jobs.PreferHeader = None
) -> Response:
    """Graceful (ACPI, then the guest agent); 504 when the guest did not stop within
    ``timeout`` and ``force`` is false."""
    want = body or StopIn()
    work = partial(
        jobs.lifecycle, call.svc, "stop", name, call.project, prefer, want.timeout, want.force
    )
    return _day2(call, want.model_dump(mode="json"), work, prefer)


@router.post("/reboot", response_model=VmDetail, responses=idempotent.responses(200, True))
def reboot_vm(
    name: str, call: Keyed, body: RebootIn | None = None, prefer: jobs.PreferHeader = None
) -> Response:
    want = body or RebootIn()
    work = partial(jobs.lifecycle, call.svc, "reboot", name, call.project, prefer, force=want.force)
    return _day2(call, want.model_dump(mode="json"), work, prefer)


@router.post("/resize", response_model=VmDetail, responses=idempotent.responses(200))
def resize_vm(name: str, body: ResizeIn, call: Keyed) -> Response:
    """409 unless the VM is stopped; 507 (naming the room left) when its node has no room."""

    def work() -> VmRecord:
        vm = call.svc.vms.get_in_project(name, call.project)
        return call.svc.vms.resize(vm.name, ram=body.RAM, cpu=body.CPU, disk=body.Disk)

    return _day2(call, body.model_dump(mode="json"), work)


@router.get("/events", response_model=list[EventOut])
def vm_events(
    name: str,
    project: Project,
    svc: Svc,
    since: Annotated[str | None, Query(description="an age (15m, 2h, 7d) or an ISO time")] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
) -> list[dict[str, Any]]:
    """The VM's audit log, oldest first."""
    vm = svc.vms.get_in_project(name, project)
    return svc.vms.events(vm.name, since=since, limit=limit)


@router.get("/console", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def console_log(name: str, project: Project, svc: Svc) -> Response:
    """What the VM's serial console has written so far (the last MiB)."""
    vm = svc.vms.get_in_project(name, project)
    return Response(svc.vms.console_log(vm.name), media_type="text/plain; charset=utf-8")
