"""Idempotency-Key on every mutating route (docs/api.md, "Retries"): the route takes a ``Keyed``
parameter and hands its work to its ``answer``, which runs it once per key
(``vmctl.services.idempotency``) and answers with its result, or with the first request's
result, replayed, for a retry.

The fingerprint of a request is its method (with " async" for `Prefer: respond-async`, whose
answer, 202 and a job, is another one), its path (the VM's name and the route: a key cannot be
used on two routes) and its JSON body.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response
from fastapi.responses import JSONResponse

from vmctl.api.deps import Project, Svc
from vmctl.api.errors import error_body, status_of
from vmctl.api.routes import jobs
from vmctl.core import idempotency
from vmctl.core.errors import Busy, VmctlError
from vmctl.core.idempotency import Answer
from vmctl.services import Services

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=idempotency.HEADER,
        description=(
            "Any unique value of 1 to 255 visible ASCII characters (no quotes, backslashes or "
            "spaces), e.g. a UUID; kept 24 h per project. A request with a key used before gets "
            "the first request's status and body (header Idempotent-Replayed: true), waiting "
            "for it if it still runs; the same key with another method, path or body is refused "
            "(422). HAProxy gives a POST or DELETE without one a key of its own, so its retries "
            "never run it twice."
        ),
        examples=["8e03978e-40d5-43e8-bc93-6894a57f9324"],
    ),
]

_REPLAYED = {"Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}}}


def responses(status: int, queued: bool = False) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of an idempotent route: ``status`` (its success) may be replayed;
    ``queued``: it has the async form too (202 and the job)."""
    return {status: {"headers": _REPLAYED}, **(jobs.ASYNC_RESPONSE if queued else {})}


@dataclass(frozen=True)
class Call:
    """What an idempotent route gets (``Keyed``): the services, the caller's project, the
    request and its Idempotency-Key."""

    svc: Services
    project: str
    request: Request
    key: str | None

    def answer(
        self, payload: Any, work: Callable[[], tuple[int, Any]], prefer: str | None = None
    ) -> Response:
        """``work()``'s (status, JSON body) as the response, run once per key of the project
        (no key: it simply runs); ``payload``: the request's JSON body (None without one). A
        refusal ``work`` raises (4xx) is its answer too, kept for the key but a 400 and a 409
        Busy (another operation held the VM: it may be free for the retry); a server error is
        raised (the error handlers answer it; nothing is kept, a retry runs again). A
        202's body is a job: its Location is added."""
        method = self.request.method + (" async" if jobs.wants_async(prefer) else "")
        digest = idempotency.fingerprint(method, self.request.url.path, payload)
        got = self.svc.idempotency.run(self.project, self.key, digest, lambda: _run(work))
        headers = {"Idempotent-Replayed": "true"} if got.replayed else {}
        if got.status == 202:
            headers.update(jobs.accepted_headers(int(got.body["id"])))
        if got.status == 204:
            return Response(status_code=204, headers=headers or None)
        return JSONResponse(got.body, status_code=got.status, headers=headers or None)


def keyed(svc: Svc, project: Project, request: Request, key: IdempotencyKey = None) -> Call:
    return Call(svc, project, request, key)


# A route's parameter: its Call (the key's header, the bearer token: in the OpenAPI document too).
Keyed = Annotated[Call, Depends(keyed)]


def _run(work: Callable[[], tuple[int, Any]]) -> Answer:
    # Runs to the end (or rolls back) even if the client goes away: the work is not tied to the
    # connection.
    try:
        status, body = work()
    except VmctlError as e:
        status = status_of(e)
        if status >= 500 or isinstance(e, Busy):
            raise  # not kept: a retry with the key runs again (Busy: once the VM is free)
        return Answer(status, error_body(str(e), getattr(e, "field", None)))
    return Answer(status, body)
