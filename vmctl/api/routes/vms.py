"""/api/v1/vm and /api/v1/ip/: the prototype's VM contract, one project per token."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from vmctl.api.deps import Project, Svc
from vmctl.api.errors import ERRORS
from vmctl.api.models import IpIn, VmDetail, VmIn, VmOut, vm_detail
from vmctl.core.logfields import fields
from vmctl.core.requests import CreateRequest

router = APIRouter(prefix="/api/v1", responses=ERRORS)
log = logging.getLogger("vmctl.serve")


@router.post("/vm", status_code=201, response_model=VmDetail)
def create_vm(body: VmIn, project: Project, svc: Svc) -> dict[str, Any]:
    req = CreateRequest(
        name=body.Name,
        ram_mb=body.RAM,
        cpu=body.CPU,
        disk_gb=body.Disk,
        image=body.Image,
        authorized_keys=body.SSHKeys or None,
        project=project,
    )
    # Runs to the end (or rolls back) even if the client goes away: the work is not tied to the
    # connection.
    vm = svc.vms.create(req)
    log.info("created", extra=fields(vm=vm.name, node=vm.node, project=project))
    return vm_detail(vm)


@router.get("/vm", response_model=list[VmOut])
def list_vms(
    project: Project,
    svc: Svc,
    node: Annotated[str | None, Query(description="only VMs on this node")] = None,
    state: Annotated[str | None, Query(description="only VMs in this state")] = None,
) -> Response:
    body = svc.vms.list_contract_json(project, node=node, state=state)
    return Response(content=body, media_type="application/json")


@router.get("/vm/{name}", response_model=VmDetail)
def get_vm(name: str, project: Project, svc: Svc) -> dict[str, Any]:
    return vm_detail(svc.vms.get_in_project(name, project))


@router.delete("/vm/{name}", status_code=204)
def delete_vm(name: str, project: Project, svc: Svc) -> Response:
    vm = svc.vms.get_in_project(name, project)
    svc.vms.delete(vm.name)
    log.info("deleted", extra=fields(vm=vm.name, project=project))
    return Response(status_code=204)


@router.post("/ip/", response_model=VmDetail)
def look_for_ip(body: IpIn, project: Project, svc: Svc) -> dict[str, Any]:
    """Look at the VM's node for its address now (what the prototype's cron called)."""
    vm = svc.vms.get_in_project(body.name, project)
    return vm_detail(svc.vms.look_now(vm.name))
