"""/api/v1/vm and /api/v1/ip/: the prototype's VM contract, one project per token."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from vmctl.api.deps import Project, Svc
from vmctl.api.errors import ERRORS
from vmctl.api.models import IpIn, VmDetail, VmIn, VmOut, vm_detail
from vmctl.api.routes import jobs
from vmctl.core.logfields import fields
from vmctl.core.requests import CreateRequest

router = APIRouter(prefix="/api/v1", responses=ERRORS)
log = logging.getLogger("vmctl.serve")
MAX_PAGE = 10000  # the most VMs one page of GET /api/v1/vm holds


@router.post("/vm", status_code=201, response_model=VmDetail, responses=jobs.ASYNC_RESPONSE)
def create_vm(
    body: VmIn, project: Project, svc: Svc, prefer: jobs.PreferHeader = None
) -> dict[str, Any] | Response:
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
    vm = jobs.create(svc, req, prefer)
    if isinstance(vm, Response):
        return vm  # 202: queued
    log.info("created", extra=fields(vm=vm.name, node=vm.node, project=project))
    return vm_detail(vm)


@router.get("/vm", response_model=list[VmOut])
def list_vms(
    project: Project,
    svc: Svc,
    request: Request,
    node: Annotated[str | None, Query(description="only VMs on this node")] = None,
    state: Annotated[str | None, Query(description="only VMs in this state")] = None,
    limit: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_PAGE,
            description="a page: at most this many VMs (by name); without it, all of them",
        ),
    ] = None,
    after: Annotated[
        str | None, Query(description="a page: only VMs whose names come after this one")
    ] = None,
) -> Response:
    body, count, last = svc.vms.list_contract_page(project, node, state, limit, after)
    headers = {}
    if limit is not None and count == limit and last is not None:
        # the next page, as GitHub's API links it (relative: behind HAProxy the replica does
        # not know the address the client used)
        url = request.url.include_query_params(after=last)
        headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
    return Response(content=body, media_type="application/json", headers=headers)


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
