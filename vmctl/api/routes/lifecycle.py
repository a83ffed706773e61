"""/api/v1/vm/{name}/start|stop|reboot|resize, its events and its console log: the day-2 verbs
of the CLI, for one project's VMs. A VM another operation holds answers 409 (busy)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from vmctl.api.deps import Project, Svc
from vmctl.api.errors import ERRORS
from vmctl.api.models import VmDetail, vm_detail

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


@router.post("/start", response_model=VmDetail)
def start_vm(name: str, project: Project, svc: Svc) -> dict[str, Any]:
    vm = svc.vms.get_in_project(name, project)
    return vm_detail(svc.vms.start(vm.name))


@router.post("/stop", response_model=VmDetail)
def stop_vm(name: str, project: Project, svc: Svc, body: StopIn | None = None) -> dict[str, Any]:
    """Graceful (ACPI, then the guest agent); 504 when the guest did not stop within
    ``timeout`` and ``force`` is false."""
    want = body or StopIn()
    vm = svc.vms.get_in_project(name, project)
    return vm_detail(svc.vms.stop(vm.name, want.timeout, want.force))


@router.post("/reboot", response_model=VmDetail)
def reboot_vm(
    name: str, project: Project, svc: Svc, body: RebootIn | None = None
) -> dict[str, Any]:
    vm = svc.vms.get_in_project(name, project)
    return vm_detail(svc.vms.reboot(vm.name, (body or RebootIn()).force))


@router.post("/resize", response_model=VmDetail)
def resize_vm(name: str, body: ResizeIn, project: Project, svc: Svc) -> dict[str, Any]:
    """409 unless the VM is stopped; 507 (naming the room left) when its node has no room."""
    vm = svc.vms.get_in_project(name, project)
    return vm_detail(svc.vms.resize(vm.name, ram=body.RAM, cpu=body.CPU, disk=body.Disk))


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
