"""/api/v1/vm and /api/v1/ip/: the prototype's VM contract, one project per token."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from vmctl.api.deps import Project, Svc
from vmctl.api.errors import ERRORS, error_body, status_of
from vmctl.api.models import IpIn, VmDetail, VmIn, VmOut, vm_detail
from vmctl.api.routes import jobs
from vmctl.core import idempotency
from vmctl.core.errors import VmctlError
from vmctl.core.idempotency import Answer
from vmctl.core.logfields import fields
from vmctl.core.requests import CreateRequest

router = APIRouter(prefix="/api/v1", responses=ERRORS)
log = logging.getLogger("vmctl.serve")
MAX_PAGE = 10000  # the most VMs one page of GET /api/v1/vm holds


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=idempotency.HEADER,
        description=(
            "Any unique value of 1 to 255 visible ASCII characters (no quotes, backslashes or "
            "spaces), e.g. a UUID; kept 24 h per project. A request with a key used before gets "
            "the first request's status and body (header Idempotent-Replayed: true), waiting "
            "for it if it still runs; the same key with another body is refused (422). HAProxy "
            "gives a create without one a key of its own, so its retries never create twice."
        ),
        examples=["8e03978e-40d5-43e8-bc93-6894a57f9324"],
    ),
]


@router.post(
    "/vm",
    status_code=201,
    response_model=VmDetail,
    responses={
        201: {"headers": {"Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}}}},
        **jobs.ASYNC_RESPONSE,
    },
)
def create_vm(
    body: VmIn,
    project: Project,
    svc: Svc,
    key: IdempotencyKey = None,
    prefer: jobs.PreferHeader = None,
) -> JSONResponse:
    payload = body.model_dump(mode="json")
    # An async request's answer (202, the job) differs from a waiting one's: another request.
    method = "POST async" if jobs.wants_async(prefer) else "POST"
    digest = idempotency.fingerprint(method, "/api/v1/vm", payload)
    answer = svc.idempotency.run(project, key, digest, lambda: _create(body, project, svc, prefer))
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else {}
    if answer.status == 202:
        headers.update(jobs.accepted_headers(int(answer.body["id"])))
    return JSONResponse(answer.body, status_code=answer.status, headers=headers or None)


def _create(body: VmIn, project: str, svc: Svc, prefer: str | None) -> Answer:
    """The create's answer: 201 and the VM, 202 and its job when queued (Prefer:
    respond-async), or a refusal (4xx; its key keeps all but a 400); a server error is raised
    (the error handlers answer it, and the key keeps nothing)."""
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
    try:
        vm = jobs.create(svc, req, prefer)
    except VmctlError as e:
        status = status_of(e)
        if status >= 500:
            raise
        return Answer(status, error_body(str(e), getattr(e, "field", None)))
    if isinstance(vm, dict):
        log.info("queued", extra=fields(vm=req.name, job=vm["id"], project=project))
        return Answer(202, vm)
    log.info("created", extra=fields(vm=vm.name, node=vm.node, project=project))
    return Answer(201, vm_detail(vm))


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
