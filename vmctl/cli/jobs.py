"""Durable jobs from the command line: `create|delete|start|stop|reboot|move --queue` (queue,
then wait for the job and print what the in-process command prints) and `vmctl job show|wait ID`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from vmctl.cli.options import Format, output_options, progress, settings
from vmctl.cli.output import emit
from vmctl.core.errors import VmctlError

if TYPE_CHECKING:
    from vmctl.core.records import VmRecord
    from vmctl.core.requests import CreateRequest
    from vmctl.services.batch import Outcome
    from vmctl.services.jobs import JobService
    from vmctl.services.move import DrainResult
    from vmctl.services.vms import VmService

app = typer.Typer(
    help="Durable jobs (`create --queue`, the API's async form).", no_args_is_help=True
)

JOB_COLUMNS = [
    ("id", "ID"),
    ("kind", "KIND"),
    ("vm", "VM"),
    ("state", "STATE"),
    ("attempts", "ATTEMPTS"),
    ("worker", "WORKER"),
    ("error", "ERROR"),
]


def _jobs(svc: VmService) -> JobService:
    from vmctl import wiring

    return wiring.job_service(settings(), svc)


def create_queued(
    svc: VmService, requests: list[CreateRequest], until: str | None, timeout: float
) -> list[Outcome]:
    """Queue one create job per VM, then wait for each (and, with --wait, for the VM)."""
    from vmctl.services.batch import Outcome

    jobs = _jobs(svc)
    queued: list[tuple[str, int | VmctlError]] = []
    for req in requests:
        try:
            job_id = jobs.submit_create(req)
        except VmctlError as exc:
            if len(requests) > 1:
                progress(f"{req.name}: error: {exc}")
            queued.append((req.name, exc))
            continue
        progress(f"{req.name}: queued as job {job_id}; {jobs.waiting_for()}")
        queued.append((req.name, job_id))
    outcomes = []
    for name, job in queued:
        if isinstance(job, VmctlError):
            outcomes.append(Outcome(name, error=job))
            continue
        try:
            vm = jobs.run_and_wait(job)
            assert vm is not None
            if until is not None:
                vm = svc.wait(vm.name, timeout, until)
        except VmctlError as exc:
            if len(requests) > 1:
                progress(f"{name}: error: {exc}")
            outcomes.append(Outcome(name, error=exc))
        else:
            outcomes.append(Outcome(name, vm=vm))
    return outcomes


def delete_queued(svc: VmService) -> Callable[[str], object]:
    jobs = _jobs(svc)

    def delete(name: str) -> None:
        job_id = jobs.submit_delete(name)
        progress(f"{name}: queued as job {job_id}; {jobs.waiting_for()}")
        jobs.run_and_wait(job_id)

    return delete


def lifecycle_queued(
    svc: VmService, kind: str, timeout: float = 60.0, force: bool = False
) -> Callable[[str], object]:
    jobs = _jobs(svc)

    def act(name: str) -> None:
        job_id = jobs.submit_lifecycle(kind, name, timeout, force)
        progress(f"{name}: queued as job {job_id}; {jobs.waiting_for()}")
        jobs.run_and_wait(job_id)

    return act


def move_queued(svc: VmService, name: str, to: str, timeout: float) -> VmRecord:
    jobs = _jobs(svc)
    job_id = jobs.submit_move(name, to, timeout)
    progress(f"{name}: queued as job {job_id}; {jobs.waiting_for()}")
    vm = jobs.run_and_wait(job_id)
    assert vm is not None
    return vm


def drain_queued(svc: VmService, node: str, stop_local: bool, timeout: float) -> DrainResult:
    jobs = _jobs(svc)
    progress(f"node {node}: one job per VM; {jobs.waiting_for()}")
    return jobs.drain(node, stop_local, timeout)


JobArg = Annotated[int, typer.Argument(help="The job's id.")]


@app.command("show")
@output_options
def show(job_id: JobArg, *, fmt: Format) -> None:
    """Show one job: kind, VM, state, attempts, result or error."""
    from vmctl.cli.options import vm_service

    emit(_jobs(vm_service(quiet=True)).get(job_id).as_dict(), JOB_COLUMNS, fmt)


@app.command("wait")
@output_options
def wait(
    job_id: JobArg,
    timeout: Annotated[float, typer.Option(help="Seconds to wait (exit 7 then).")] = 3600,
    *,
    fmt: Format,
) -> None:
    """Wait until a job is done; show it. Exits with the job's exit code if it failed."""
    from vmctl.cli.options import vm_service
    from vmctl.core.jobs import error_of

    job = _jobs(vm_service(quiet=True)).wait(job_id, timeout)
    emit(job.as_dict(), JOB_COLUMNS, fmt)
    if job.state == "failed":
        raise error_of(job)
