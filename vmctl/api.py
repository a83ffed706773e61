"""The HTTP API (`vmctl serve`): the prototype's JSON contract on the same core as the CLI.

    POST   /api/v1/vm              create ({"Name", "RAM", "CPU", "Disk"}, numbers as strings) → 201
    GET    /api/v1/vm              list: [{Name, RAM, CPU, Disk, IP, CreatedAt}]
    GET    /api/v1/vm/{name}       one VM
    DELETE /api/v1/vm/{name}       delete → 204
    POST   /api/v1/ip/             look for one VM's address now ({"name"}) → the VM
    POST   /api/v1/phone-home/{name}?secret=S   the guest's cloud-init says it is up (internal)
    GET    /healthz, /readyz       liveness; readiness (PostgreSQL answers)

Every /api/v1/vm and /api/v1/ip call needs `Authorization: Bearer TOKEN` (`vmctl token create
--project P`); a token sees only its project's VMs. Errors are JSON: {"error": MESSAGE, "field":
FIELD?}, never a traceback. The OpenAPI document is at /openapi.json.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from datetime import UTC
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException

from vmctl import tokens, watcher
from vmctl.errors import (
    CapacityError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    StoreUnavailable,
    Timeout,
    Unavailable,
    VmctlError,
)
from vmctl.logs import fields
from vmctl.service import CreateRequest, VmService
from vmctl.store import VmRecord

UNASSIGNED = "unassigned"


# -- the contract ---------------------------------------------------------------------------------


class VmIn(BaseModel):
    """The prototype's create body: its sample verbatim, or its lowercase keys."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    Name: str = Field(validation_alias=AliasChoices("Name", "name"), examples=["test-1"])
    RAM: str | StrictInt | None = Field(
        None, validation_alias=AliasChoices("RAM", "ram"), description="MiB", examples=["1024"]
    )
    CPU: str | StrictInt | None = Field(
        None, validation_alias=AliasChoices("CPU", "cpu"), examples=["2"]
    )
    Disk: str | StrictInt | None = Field(
        None, validation_alias=AliasChoices("Disk", "disk"), description="GiB", examples=["10"]
    )
    Image: str | None = Field(None, validation_alias=AliasChoices("Image", "image"))
    SSHKeys: list[str] | None = Field(
        None,
        validation_alias=AliasChoices("SSHKeys", "ssh_keys"),
        description="OpenSSH public keys for the guest (default: the server's)",
    )


class VmOut(BaseModel):
    """A VM as the prototype listed it: every value a string."""

    Name: str
    RAM: str = Field(description="MiB")
    CPU: str
    Disk: str = Field(description="GiB")
    IP: str = Field(description='the address, or "unassigned" until it is known')
    CreatedAt: str = Field(
        description="ISO-8601 UTC with milliseconds", examples=["2021-06-29T19:33:30.839Z"]
    )


class VmDetail(VmOut):
    Node: str
    State: str
    IPState: str | None = Field(description="expected (reserved, not yet seen) or confirmed")


class IpIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(validation_alias=AliasChoices("name", "Name"), examples=["test-1"])


class Error(BaseModel):
    error: str
    field: str | None = None


def created_at(vm: VmRecord) -> str:
    at = vm.created_at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def vm_out(vm: VmRecord) -> dict[str, str]:
    return {
        "Name": vm.name,
        "RAM": str(vm.ram_mb),
        "CPU": str(vm.cpu),
        "Disk": str(vm.disk_gb),
        "IP": vm.ip if vm.ip and vm.ip_state == "confirmed" else UNASSIGNED,
        "CreatedAt": created_at(vm),
    }


def vm_detail(vm: VmRecord) -> dict[str, Any]:
    return {**vm_out(vm), "Node": vm.node, "State": vm.state, "IPState": vm.ip_state}


# -- errors ---------------------------------------------------------------------------------------


class Unauthorized(Exception):
    """No bearer token, or one that is not valid: 401."""


STATUS: list[tuple[type[VmctlError], int]] = [
    (InvalidInput, 400),
    (Conflict, 409),
    (CapacityError, 507),
    (NotFound, 404),
    (Forbidden, 403),
    (StoreUnavailable, 503),
    (Timeout, 504),
    (Unavailable, 503),
    (VmctlError, 500),
]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Error} for code in (400, 401, 403, 404, 409, 422, 500, 503, 507)
}


def error_response(status: int, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


# -- the app --------------------------------------------------------------------------------------


def project_of(
    request: Request,
    authorization: Annotated[str | None, Header(description="Bearer TOKEN")] = None,
) -> str:
    """The project of the request's bearer token; 401 without a valid one."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a bearer token is needed (Authorization: Bearer TOKEN)")
    service: VmService = request.app.state.service()
    found = service.store.token_project(tokens.digest(token.strip()))
    if found is None:
        raise Unauthorized("the token is not valid (unknown or revoked)")
    return found


Project = Annotated[str, Depends(project_of)]


def create_app(make_service: Callable[[], VmService], log: logging.Logger) -> FastAPI:
    """The API over services made by ``make_service`` (one per worker thread: each holds its own
    PostgreSQL connection and node connections)."""
    local = threading.local()

    def service() -> VmService:
        svc = getattr(local, "service", None)
        if svc is None:
            svc = local.service = make_service()
        return svc

    app = FastAPI(
        title="vmctl",
        version="1",
        description="Create, list and delete VMs on the vmctl cloud (the prototype's contract).",
    )
    app.state.service = service

    @app.exception_handler(VmctlError)
    def vmctl_error(_request: Request, exc: VmctlError) -> JSONResponse:
        status = next(code for kind, code in STATUS if isinstance(exc, kind))
        if status >= 500:
            log.warning("request failed", extra=fields(status=status, error=str(exc)))
        return error_response(status, str(exc), getattr(exc, "field", None))

    @app.exception_handler(HTTPException)
    def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        """Starlette's own answers (unknown path, wrong method, a body that is not text)."""
        response = error_response(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = list(first.get("loc", ()))
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        # A JSON syntax error's location is a character position: no field to name then.
        where = (
            [part for part in loc if isinstance(part, str)]
            if len(loc) == 0 or isinstance(loc[0], str)
            else []
        )
        field = ".".join(where) or None
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        return error_response(422, message, field)

    @app.exception_handler(Exception)
    def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__})")

    @app.exception_handler(Unauthorized)
    def unauthorized(_request: Request, exc: Unauthorized) -> JSONResponse:
        return error_response(401, str(exc))

    def own(name: str, project: str) -> VmRecord:
        vm = service().get(name)
        if vm.project != project:
            raise NotFound(f"no VM named {vm.name}")
        return vm

    @app.post("/api/v1/vm", status_code=201, response_model=VmDetail, responses=ERRORS)
    def create_vm(body: VmIn, project: Project) -> dict[str, Any]:
        svc = service()
        defaults = svc.inventory.defaults
        req = CreateRequest(
            name=body.Name,
            ram_mb=body.RAM if body.RAM is not None else defaults.ram_mb,
            cpu=body.CPU if body.CPU is not None else defaults.cpu,
            disk_gb=body.Disk if body.Disk is not None else defaults.disk_gb,
            image=body.Image,
            authorized_keys=body.SSHKeys or svc.default_keys,
            project=project,
        )
        # Runs to the end (or rolls back) even if the client goes away: the work is not tied to
        # the connection.
        vm = svc.create(req)
        log.info("created", extra=fields(vm=vm.name, node=vm.node, project=project))
        return vm_detail(vm)

    @app.get("/api/v1/vm", response_model=list[VmOut], responses=ERRORS)
    def list_vms(
        project: Project,
        node: Annotated[str | None, Query(description="only VMs on this node")] = None,
        state: Annotated[str | None, Query(description="only VMs in this state")] = None,
    ) -> Response:
        svc = service()
        if node is not None:
            svc.inventory.node(node)  # 404 for a node that does not exist
        body = svc.store.list_contract_json(project, node=node, state=state)
        return Response(content=body, media_type="application/json")

    @app.get("/api/v1/vm/{name}", response_model=VmDetail, responses=ERRORS)
    def get_vm(name: str, project: Project) -> dict[str, Any]:
        return vm_detail(own(name, project))

    @app.delete("/api/v1/vm/{name}", status_code=204, responses=ERRORS)
    def delete_vm(name: str, project: Project) -> Response:
        vm = own(name, project)
        service().delete(vm.name)
        log.info("deleted", extra=fields(vm=vm.name, project=project))
        return Response(status_code=204)

    @app.post("/api/v1/ip/", response_model=VmDetail, responses=ERRORS)
    def look_for_ip(body: IpIn, project: Project) -> dict[str, Any]:
        """Look at the VM's node for its address now (what the prototype's cron called)."""
        vm = own(body.name, project)
        svc = service()
        finder = watcher.Watcher(svc.inventory, svc.store, svc.cache, svc.connect, log, svc.sources)
        _rows, problems = finder.once([vm.name])
        if problems:
            raise Unavailable("; ".join(problems))
        return vm_detail(svc.get(vm.name))

    @app.post("/api/v1/phone-home/{name}", status_code=204, responses=ERRORS)
    def phone_home(
        name: str,
        request: Request,
        secret: Annotated[str, Query(min_length=1, description="the VM's one-time secret")],
    ) -> Response:
        """Called by the guest's cloud-init (phone_home) once it is up: its address is the
        request's source (HAProxy passes it on in X-Forwarded-For)."""
        svc = service()
        source = request.client.host if request.client else ""
        vm = svc.get(name)
        subnet = svc.inventory.node(vm.node).network.subnet
        try:
            inside = ipaddress.ip_address(source) in subnet
        except ValueError:
            inside = False
        if not inside:
            raise Forbidden(f"{name}: a call from {source or 'nowhere'} is not from {subnet}")
        change = svc.store.record_phone_home(vm.name, tokens.digest(secret), source)
        if change is not None:
            svc.cache.publish_ip(watcher.change_message(change))
            log.info("ip recorded", extra=fields(vm=name, ip=source, source="phone-home"))
        return Response(status_code=204)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": Error}})
    def readyz() -> dict[str, str]:
        service().store.ping()
        return {"status": "ready"}

    return app
