"""vmctl's errors, Starlette's own and validation errors as the contract's JSON errors:
{"error": MESSAGE, "field": FIELD?}, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from vmctl.api.models import Error
from vmctl.core.errors import (
    Busy,
    CapacityError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    StoreUnavailable,
    Timeout,
    Unauthenticated,
    Unavailable,
    VmctlError,
    WrongState,
)
from vmctl.core.idempotency import KeyReused
from vmctl.core.logfields import fields

STATUS: list[tuple[type[VmctlError], int]] = [
    (KeyReused, 422),
    (InvalidInput, 400),
    (Unauthenticated, 401),
    (Conflict, 409),
    (Busy, 409),
    (WrongState, 409),
    (CapacityError, 507),
    (NotFound, 404),
    (Forbidden, 403),
    (StoreUnavailable, 503),
    (Timeout, 504),
    (Unavailable, 503),
    (VmctlError, 500),
]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Error} for code in (400, 401, 403, 404, 409, 422, 500, 503, 504, 507)
}


def status_of(exc: VmctlError) -> int:
    return next(code for kind, code in STATUS if isinstance(exc, kind))


def error_body(message: str, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return body


def error_response(status: int, message: str, field: str | None = None) -> JSONResponse:
    body = error_body(message, field)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
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
    return (f"{field}: {first.get('msg')}" if field else str(first.get("msg"))), field


def install(app: FastAPI, log: logging.Logger) -> None:
    """The exception handlers of ``app``."""

    @app.exception_handler(VmctlError)
    def vmctl_error(_request: Request, exc: VmctlError) -> JSONResponse:
        status = status_of(exc)
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
        message, field = _validation_message(exc)
        return error_response(422, message, field)

    @app.exception_handler(Exception)
    def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__})")
