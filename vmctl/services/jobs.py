"""Durable jobs (docs/architecture.md, "Durable jobs"): creates, deletes, starts, stops, reboots
and moves queued in PostgreSQL and run by `vmctl worker`, any of several.

``submit_*`` checks the request first (bad input is refused at once, nothing queued) and queues
it; ``wait`` polls the job until it is done; ``run`` is the worker's side: it records the attempt,
runs the operation (each is safe to run again after a worker died mid-way: the create as
``create.create_job``, a move through ``move.move``, which first ends a move that died) and
records the outcome. A failed job's error comes back to the waiter as the same typed error the
operation raised (``vmctl.core.jobs.error_of``): the same exit code, the same HTTP status.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmctl.core import validation
from vmctl.core.errors import Busy, NotFound, Timeout, VmctlError
from vmctl.core.jobs import Job, error_of
from vmctl.core.requests import CreateRequest
from vmctl.services.ports import JobQueue, VmLocks

if TYPE_CHECKING:
    from vmctl.core.records import VmRecord
    from vmctl.services.move import DrainResult
    from vmctl.services.vms import VmService

POLL_S = 0.5  # how often a waiter looks at its job
LIVE_S = 60.0  # a worker whose heartbeat is older than this is not counted as running
SLOT_POLL_S = 1.0  # how often a create waiting for a node slot tries again


@dataclass
class JobService:
    queue: JobQueue
    vms: VmService
    poll: float = POLL_S

    # -- the caller's side -------------------------------------------------------------------

    def submit_create(self, req: CreateRequest) -> int:
        from vmctl.services import create

        new = create.check(self.vms, req)  # InvalidInput, Conflict: nothing is queued
        # the keys the caller means (its request's, else its server's defaults): the worker's
        # own defaults may differ
        keys = create.authorized_keys(self.vms, req)
        args = {**_request_args(req), "name": new.name, "mac": new.mac, "authorized_keys": keys}
        return self.queue.enqueue(
            "create", new.name, args, project=req.project, actor=self.vms.actor
        )

    def submit_delete(self, name: str, project: str | None = None) -> int:
        vm = self.vms.get(validation.name(name))  # NotFound: nothing is queued
        return self.queue.enqueue(
            "delete",
            vm.name,
            {"name": vm.name},
            project=project or vm.project,
            actor=self.vms.actor,
        )

    def submit_lifecycle(
        self, kind: str, name: str, timeout: float = 60.0, force: bool = False
    ) -> int:
        """Queue a start, stop or reboot (each safe to run again: start and stop end in their
        state whatever it was; a reboot run again reboots once more)."""
        if kind not in ("start", "stop", "reboot"):
            raise ValueError(f"not a lifecycle job: {kind!r}")
        if kind == "stop":
            validation.seconds("timeout", timeout)
        vm = self.vms.get(validation.name(name))  # NotFound: nothing is queued
        args = {"name": vm.name, "timeout": timeout, "force": force}
        return self.queue.enqueue(kind, vm.name, args, project=vm.project, actor=self.vms.actor)

    def submit_move(self, name: str, to: str, timeout: float = 120.0) -> int:
        """Queue a move (safe to run again: a move that died half-way is ended first, see
        vmctl.services.move)."""
        from vmctl.services import move

        validation.seconds("timeout", timeout)
        vm = self.vms.get(validation.name(name))  # NotFound: nothing is queued
        target = move.target_of(self.vms, to)  # InvalidInput: nothing is queued
        source = self.vms.inventory.node(vm.node)
        move.check_movable(self.vms, vm, source, target)  # WrongState, InvalidInput
        args = {"name": vm.name, "to": target.name, "timeout": timeout}
        return self.queue.enqueue("move", vm.name, args, project=vm.project, actor=self.vms.actor)

    def drain(self, node: str, stop_local: bool = False, timeout: float = 120.0) -> DrainResult:
        """`vmctl drain --queue`: a move job for each VM on shared storage (and, with
        ``stop_local``, a forced stop job for each VM on the node's own disks), all queued
        before any is waited for (the workers run them side by side); what each did."""
        from vmctl.services import move

        plan = move.checked_drain(self.vms, node, stop_local, timeout)
        queued: list[tuple[str, str | None, int | VmctlError]] = []
        for name in plan.local:
            queued.append(
                (name, None, self._try(self.submit_lifecycle, "stop", name, timeout, True))
            )
        for name, target in plan.moves:
            queued.append((name, target, self._try(self.submit_move, name, target, timeout)))
        result = move.DrainResult()
        for name, to, job in queued:
            try:
                if isinstance(job, VmctlError):
                    raise job
                self.run_and_wait(job)
            except VmctlError as exc:
                result.failed.append((name, str(exc)))
            else:
                if to is None:
                    result.stopped.append(name)
                else:
                    result.moved.append((name, to))
        return result

    @staticmethod
    def _try(submit: Callable[..., int], *args: Any) -> int | VmctlError:
        try:
            return submit(*args)
        except VmctlError as exc:
            return exc

    def waiting_for(self) -> str:
        """What a caller waits for, in words: a worker, or none running now."""
        n = self.queue.live_workers(LIVE_S)
        if n == 0:
            return "waiting for a worker (none is running now: start `vmctl worker`)"
        return f"waiting for a worker ({n} running)"

    def get(self, job_id: int, project: str | None = None) -> Job:
        """The job; with ``project``, NotFound for another project's (the API's scope)."""
        job = self.queue.get(job_id)
        if project is not None and job.project != project:
            raise NotFound(f"no job {job_id}")
        return job

    def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """The job once done (succeeded or failed); Timeout after ``timeout`` s (None: never)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.queue.get(job_id)
            if job.done:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(
                    f"job {job_id} ({job.kind} {job.vm}) is still {job.state} after {timeout:g} s "
                    "(is a `vmctl worker` running?)"
                )
            time.sleep(self.poll)

    def outcome(self, job: Job) -> VmRecord | None:
        """The VM a done job leaves (None after a delete); its error if it failed."""
        if job.state == "failed":
            raise error_of(job)
        if job.kind == "delete":
            return None
        return self.vms.get(job.vm)

    def run_and_wait(self, job_id: int, timeout: float | None = None) -> VmRecord | None:
        return self.outcome(self.wait(job_id, timeout))

    # -- the worker's side -------------------------------------------------------------------

    def run(self, job_id: int, kind: str, args: Mapping[str, Any], worker: str) -> dict[str, Any]:
        """Run one job (its kind and arguments as queued) and record how it ended; the result
        recorded. Raises what the operation raised (the queue then marks the job failed)."""
        name = str(args.get("name", ""))
        before = self.queue.started(job_id, kind, name, worker)
        retry = before.started_at is not None  # an earlier attempt began: its worker died
        actor = f"{before.actor or self.vms.actor} (job {job_id}, {worker})"
        svc = dataclasses.replace(self.vms, actor=actor)
        try:
            result = self._run(svc, kind, args, retry)
        except VmctlError as exc:
            self.queue.failed(job_id, str(exc), type(exc).__name__, int(exc.exit_status))
            raise
        except Exception as exc:
            self.queue.failed(job_id, f"{type(exc).__name__}: {exc}", type(exc).__name__, 1)
            raise
        self.queue.succeeded(job_id, result)
        return result

    def _run(
        self, svc: VmService, kind: str, args: Mapping[str, Any], retry: bool
    ) -> dict[str, Any]:
        from vmctl.services import create, delete, move

        if kind == "create":
            fields = {f.name for f in dataclasses.fields(CreateRequest)}
            req = CreateRequest(**{k: v for k, v in args.items() if k in fields})
            vm = create.create_job(svc, req, str(args["mac"]))
            return {"name": vm.name, "node": vm.node, "state": vm.state}
        if kind == "delete":
            name = str(args["name"])
            try:
                delete.delete(svc, name)
            except NotFound:
                if not retry:
                    raise
                svc.progress(f"{name}: deleted by an earlier attempt of this job")
            return {"name": name, "deleted": True}
        if kind in ("start", "stop", "reboot"):
            name, force = str(args["name"]), bool(args.get("force", False))
            if kind == "start":
                vm = svc.start(name)
            elif kind == "stop":
                vm = svc.stop(name, float(args.get("timeout", 60.0)), force)
            else:
                vm = svc.reboot(name, force)
            return {"name": vm.name, "state": vm.state}
        if kind == "move":
            name, to = str(args["name"]), str(args["to"])
            if retry:  # an earlier attempt may have ended the move before its worker died
                vm = svc.get(name)
                if vm.node == to and vm.move_node is None:
                    svc.progress(f"{name}: moved to {to} by an earlier attempt of this job")
                    return {"name": vm.name, "node": vm.node, "state": vm.state}
            vm = move.move(svc, name, to, float(args.get("timeout", 120.0)))
            return {"name": vm.name, "node": vm.node, "state": vm.state}
        raise ValueError(f"unknown job kind {kind!r}")


def _request_args(req: CreateRequest) -> dict[str, Any]:
    args = dataclasses.asdict(req)
    if args["authorized_keys"] is not None:
        args["authorized_keys"] = list(args["authorized_keys"])
    return args


def shared_node_slot(
    locks: VmLocks, per_node: int, wait: Callable[[float], None] = time.sleep
) -> Callable[[str], Any]:
    """``VmService.slot_of`` for workers: at most ``per_node`` creates do their node work on one
    node at once across every process, each holding one of the node's ``per_node`` PostgreSQL
    locks (a dead process's slot is freed with its connection)."""

    @contextmanager
    def slot(node: str) -> Iterator[int]:
        while True:
            for i in range(per_node):
                stack = ExitStack()
                try:
                    stack.enter_context(locks.vm_lock(f"node-slot/{node}/{i}", "create", 0))
                except Busy:
                    continue
                with stack:
                    yield i
                return
            wait(SLOT_POLL_S)

    return slot
