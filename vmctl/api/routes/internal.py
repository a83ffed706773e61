"""What only the inside calls: guests phoning home, health checks (HAProxy, Prometheus)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from vmctl.api.deps import Svc
from vmctl.api.errors import ERRORS
from vmctl.api.models import Error
from vmctl.core.logfields import fields

router = APIRouter()
log = logging.getLogger("vmctl.serve")


@router.post("/api/v1/phone-home/{name}", status_code=204, responses=ERRORS)
def phone_home(
    name: str,
    request: Request,
    svc: Svc,
    secret: Annotated[str, Query(min_length=1, description="the VM's one-time secret")],
) -> Response:
    """Called by the guest's cloud-init (phone_home) once it is up: its address is the
    request's source (HAProxy passes it on in X-Forwarded-For)."""
    source = request.client.host if request.client else ""
    if svc.vms.phone_home(name, secret, source):
        log.info("ip recorded", extra=fields(vm=name, ip=source, source="phone-home"))
    return Response(status_code=204)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": Error}})
def readyz(svc: Svc) -> dict[str, str]:
    svc.vms.ping()
    return {"status": "ready"}
