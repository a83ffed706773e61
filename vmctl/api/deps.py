"""What routes get through FastAPI's dependencies: this thread's services and the caller's
project (bearer auth through FastAPI's security classes, so the OpenAPI document declares it)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vmctl.core.errors import Unauthenticated
from vmctl.services import Services

bearer = HTTPBearer(auto_error=False, description="A token of `vmctl token create --project P`.")


class PerThread:
    """One Services per worker thread: each holds its own node connections."""

    def __init__(self, make: Callable[[], Services]) -> None:
        self._make = make
        self._local = threading.local()

    def __call__(self) -> Services:
        services: Services | None = getattr(self._local, "services", None)
        if services is None:
            services = self._local.services = self._make()
        return services


def services(request: Request) -> Services:
    made: PerThread = request.app.state.services
    return made()


Svc = Annotated[Services, Depends(services)]


def project(
    svc: Svc,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
) -> str:
    """The project of the request's bearer token; 401 without a valid one."""
    if credentials is None:
        raise Unauthenticated("a bearer token is needed (Authorization: Bearer TOKEN)")
    return svc.tokens.project_of(credentials.credentials)


Project = Annotated[str, Depends(project)]
