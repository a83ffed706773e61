"""/api/v1/vm and /api/v1/ip/: the prototype's VM contract, one project per token."""

from __future__ import annotations

import logging
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from vmctl.api import idempotent
from vmctl.api.deps import Project, Svc
from vmctl.api.errors import ERRORS
from vmctl.api.idempotent import Keyed
from vmctl.api.models import IpIn, VmDetail, VmIn, VmOut, vm_detail
from vmctl.api.routes import jobs
from vmctl.core.logfields import fields
from vmctl.core.requests import CreateRequest

router = APIRouter(prefix="/api/v1", responses=ERRORS)
log = logging.getLogger("vmctl.serve")
MAX_PAGE = 10000  # the most VMs one page of GET /api/v1/vm holds


@router.post(
    "/vm", status_code=201, response_model=VmDetail, responses=idempotent.responses(201, True)
)
def create_vm(body: VmIn, call: Keyed, prefer: jobs.PreferHeader = None) -> Response:
    work = partial(_create, body, call.project, call.svc, prefer)
    return call.answer(body.model_dump(mode="json"), work, prefer)


def _create(body: VmIn, project: str, svc: Svc, prefer: str | None) -> tuple[int, Any]:
    """The create's answer: 201 and the VM, or 202 and its job when queued (Prefer:
    respond-async)."""
    req = CreateRequest(
        name=body.Name,
        ram_mb=body.RAM,
        cpu=body.CPU,
        disk_gb=body.Disk,
        image=body.Image,
        authorized_keys=body.SSHKeys or None,
        project=project,
    )
    vm = jobs.create(svc, req, prefer)
    if isinstance(vm, dict):
        log.info("queued", extra=fields(vm=req.name, job=vm["id"], project=project))
        return 202, vm
    log.info("created", extra=fields(vm=vm.name, node=vm.node, project=project))
    return 201, vm_detail(vm)


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


@router.delete("/vm/{name}", status_code=204, responses=idempotent.responses(204, True))
def delete_vm(name: str, call: Keyed, prefer: jobs.PreferHeader = None) -> Response:
    def work() -> tuple[int, Any]:
        job = jobs.delete(call.svc, name, call.project, prefer)
        if job is not None:
            log.info("queued", extra=fields(vm=job["vm"], job=job["id"], project=call.project))
            return 202, job
        log.info("deleted", extra=fields(vm=name, project=call.project))
        return 204, None

    return call.answer(None, work, prefer)


@router.post("/ip/", response_model=VmDetail)
def look_for_ip(body: IpIn, project: Project, svc: Svc) -> dict[str, Any]:
    """Look at the VM's node for its address now (what the prototype's cron called)."""
    vm = svc.vms.get_in_project(body.name, project)
    return vm_detail(svc.vms.look_now(vm.name))
