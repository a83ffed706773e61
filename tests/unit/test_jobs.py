"""Durable jobs' logic over fakes (vmctl.services.jobs, create.create_job, core.jobs): a job
checks before it queues, runs once, and run again after its worker died it finishes the VM or
rolls back what the dead attempt left: never a half VM, never two."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.unit.fakes import KEY, World, world
from vmctl.core.errors import CapacityError, ExitStatus, InvalidInput, NotFound, Timeout
from vmctl.core.jobs import Job, JobFailed, error_of
from vmctl.core.requests import CreateRequest
from vmctl.services.jobs import JobService, shared_node_slot

pytestmark = pytest.mark.unit


class FakeQueue:
    """The JobQueue port as a dict; ``queued`` holds what a worker would take."""

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}
        self.queued: list[tuple[int, str, dict[str, Any]]] = []
        self.workers = 0

    def enqueue(
        self,
        kind: str,
        vm: str,
        args: Mapping[str, Any],
        *,
        project: str | None = None,
        actor: str | None = None,
    ) -> int:
        job_id = len(self.jobs) + 1
        self.jobs[job_id] = Job(job_id, kind, vm, project=project, actor=actor)
        self.queued.append((job_id, kind, dict(args)))
        return job_id

    def live_workers(self, within_s: float) -> int:
        return self.workers

    def get(self, job_id: int) -> Job:
        if job_id not in self.jobs:
            raise NotFound(f"no job {job_id}")
        return self.jobs[job_id]

    def started(self, job_id: int, kind: str, vm: str, worker: str) -> Job:
        before = self.jobs[job_id]
        now = datetime.now(UTC)
        self.jobs[job_id] = replace(
            before, state="running", attempts=before.attempts + 1, worker=worker, started_at=now
        )
        return before

    def succeeded(self, job_id: int, result: Mapping[str, Any]) -> None:
        self.jobs[job_id] = replace(self.jobs[job_id], state="succeeded", result=dict(result))

    def failed(self, job_id: int, error: str, error_kind: str, exit_status: int) -> None:
        self.jobs[job_id] = replace(
            self.jobs[job_id],
            state="failed",
            error=error,
            error_kind=error_kind,
            exit_status=exit_status,
        )


def jobs_of(w: World) -> tuple[JobService, FakeQueue]:
    queue = FakeQueue()
    return JobService(queue=queue, vms=w.svc, poll=0.01), queue


def run_next(jobs: JobService, queue: FakeQueue, worker: str = "w1") -> dict[str, Any]:
    job_id, kind, args = queue.queued[0]
    return jobs.run(job_id, kind, args, worker)


def domains(w: World, name: str) -> list[str]:
    return [node for node, hv in w.nodes.items() if name in hv.defined]


def test_a_queued_create_is_made_by_the_worker_with_the_mac_the_job_fixed() -> None:
    w = world()
    jobs, queue = jobs_of(w)
    job_id = jobs.submit_create(CreateRequest("web-1", node="kvm2", project="demo"))
    (_, kind, args) = queue.queued[0]
    assert (kind, args["name"], queue.jobs[job_id].project) == ("create", "web-1", "demo")
    assert w.store.vms == {}  # queued only: nothing made yet
    result = run_next(jobs, queue)
    assert result == {"name": "web-1", "node": "kvm2", "state": "running"}
    vm = jobs.run_and_wait(job_id)
    assert vm is not None and vm.mac == args["mac"] and vm.project == "demo"
    assert queue.jobs[job_id].state == "succeeded" and queue.jobs[job_id].attempts == 1
    assert "(job 1, w1)" in str(w.store.logged[0][4]["actor"])
    assert args["authorized_keys"] == [KEY]  # the submitter's default keys, fixed in the job


def test_bad_input_and_a_taken_name_are_refused_before_anything_is_queued() -> None:
    w = world()
    jobs, queue = jobs_of(w)
    with pytest.raises(InvalidInput):
        jobs.submit_create(CreateRequest("web-1", ram_mb="lots"))
    w.svc.create(CreateRequest("web-2"))
    with pytest.raises(Exception, match="exists already"):
        jobs.submit_create(CreateRequest("web-2"))
    with pytest.raises(NotFound):
        jobs.submit_delete("web-9")
    assert queue.queued == []


def test_a_rerun_after_the_worker_died_mid_create_rolls_back_and_makes_it_once() -> None:
    w = world()
    jobs, queue = jobs_of(w)
    jobs.submit_create(CreateRequest("web-1", node="kvm1"))
    job_id, kind, args = queue.queued[0]
    # What the dead attempt left: the claim (row creating) and the domain, under another MAC
    # (as if it had died after the node script, before recording the VM as running).
    dead = w.svc.create(CreateRequest("web-1", node="kvm1"))
    w.store.vms["web-1"] = replace(dead, state="creating")
    queue.started(job_id, kind, "web-1", "w-dead")
    w.store.logged.clear()

    jobs.run(job_id, kind, args, "w2")

    vm = w.store.vms["web-1"]
    assert (vm.state, vm.mac, vm.node) == ("running", args["mac"], "kvm1")
    assert domains(w, "web-1") == ["kvm1"]
    assert "delete" in w.nodes["kvm1"].calls  # the dead attempt's domain was removed first
    assert w.store.events_of("web-1") == [
        ("create", "failed"),  # the rollback of the dead attempt
        ("create", "started"),
        ("create", "ok"),
    ]
    assert queue.jobs[job_id].attempts == 2 and queue.jobs[job_id].state == "succeeded"


def test_a_rerun_after_the_create_was_done_returns_that_vm_and_makes_nothing() -> None:
    w = world()
    jobs, queue = jobs_of(w)
    jobs.submit_create(CreateRequest("web-1"))
    run_next(jobs, queue, "w1")  # the VM is made; the worker dies before the queue hears it
    calls = {n: list(hv.calls) for n, hv in w.nodes.items()}
    events = list(w.store.logged)
    result = run_next(jobs, queue, "w2")
    assert result["name"] == "web-1" and result["state"] == "running"
    assert {n: hv.calls for n, hv in w.nodes.items()} == calls and w.store.logged == events


def test_a_job_of_the_same_name_whose_vm_is_someone_elses_fails_as_a_conflict() -> None:
    w = world()
    jobs, queue = jobs_of(w)
    job_id = jobs.submit_create(CreateRequest("web-1"))
    w.svc.create(CreateRequest("web-1"))  # someone else, in-process, between queue and run
    with pytest.raises(Exception, match="exists already"):
        run_next(jobs, queue)
    assert len(domains(w, "web-1")) == 1
    job = queue.jobs[job_id]
    assert (job.state, job.error_kind, job.exit_status) == ("failed", "Conflict", ExitStatus.USAGE)


def test_a_failed_job_gives_its_waiter_the_same_typed_error() -> None:
    w = world()
    jobs, queue = jobs_of(w)
    job_id = jobs.submit_create(CreateRequest("web-1", ram_mb=999999))
    with pytest.raises(CapacityError):
        run_next(jobs, queue)
    with pytest.raises(CapacityError) as raised:
        jobs.run_and_wait(job_id)
    assert raised.value.exit_status == ExitStatus.CAPACITY
    assert w.store.vms == {}


def test_a_delete_job_run_again_after_it_was_done_succeeds() -> None:
    w = world()
    jobs, queue = jobs_of(w)
    w.svc.create(CreateRequest("web-1"))
    job_id = jobs.submit_delete("web-1")
    run_next(jobs, queue, "w1")
    assert w.store.vms == {} and domains(w, "web-1") == []
    assert run_next(jobs, queue, "w2") == {"name": "web-1", "deleted": True}
    assert queue.jobs[job_id].attempts == 2 and jobs.run_and_wait(job_id) is None


def test_waiting_for_a_job_no_worker_takes_times_out_saying_so() -> None:
    w = world()
    jobs, _ = jobs_of(w)
    job_id = jobs.submit_create(CreateRequest("web-1"))
    with pytest.raises(Timeout, match=r"still queued.*vmctl worker"):
        jobs.wait(job_id, timeout=0.05)


def test_another_projects_job_is_not_found() -> None:
    w = world()
    jobs, _ = jobs_of(w)
    job_id = jobs.submit_create(CreateRequest("web-1", project="demo"))
    assert jobs.get(job_id, project="demo").id == job_id
    with pytest.raises(NotFound):
        jobs.get(job_id, project="other")


@pytest.mark.parametrize(
    ("kind", "message", "status", "expected", "exit_status"),
    [
        ("InvalidInput", "ram: must be a whole number", 2, InvalidInput, ExitStatus.USAGE),
        ("CapacityError", "no node has room", 5, CapacityError, ExitStatus.CAPACITY),
        ("ImageInUse", "in use", 2, JobFailed, ExitStatus.USAGE),  # no one-argument form
        ("KeyError", "KeyError: 'x'", 1, JobFailed, ExitStatus.ERROR),
    ],
)
def test_error_of_gives_back_the_typed_error_or_its_exit_code(
    kind: str, message: str, status: int, expected: type, exit_status: ExitStatus
) -> None:
    job = Job(1, "create", "web-1", state="failed", error=message, error_kind=kind)
    error = error_of(dataclasses.replace(job, exit_status=status))
    assert type(error) is expected and error.exit_status == exit_status
    assert str(error) == message
    if isinstance(error, InvalidInput):
        assert error.field == "ram"


def test_node_slots_let_per_node_creates_in_at_once_across_processes() -> None:
    w = world()
    slot = shared_node_slot(w.store, 2, wait=lambda _s: pytest.fail("no wait expected"))
    with slot("kvm1") as first, slot("kvm1") as second, slot("kvm2") as other:
        assert (first, second, other) == (0, 1, 0)
        assert set(w.store.held) == {"node-slot/kvm1/0", "node-slot/kvm1/1", "node-slot/kvm2/0"}
        waited: list[float] = []

        def another_process_lets_go(seconds: float) -> None:
            waited.append(seconds)
            if len(waited) == 3:  # the holder of slot 1 ends (its connection, its lock)
                del w.store.held["node-slot/kvm1/1"]

        third = shared_node_slot(w.store, 2, wait=another_process_lets_go)
        with third("kvm1") as got:
            assert got == 1 and waited == [1.0, 1.0, 1.0]
        w.store.held["node-slot/kvm1/1"] = "create"  # for the outer block to let go again
    assert w.store.held == {}


def test_start_and_stop_jobs_end_in_their_state_even_when_run_again() -> None:
    w = world()
    jobs, queue = jobs_of(w)
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    stop_id = jobs.submit_lifecycle("stop", "web-1", timeout=5, force=True)
    job_id, kind, args = queue.queued[0]
    assert (kind, args) == ("stop", {"name": "web-1", "timeout": 5, "force": True})
    assert jobs.run(job_id, kind, args, "w1") == {"name": "web-1", "state": "stopped"}
    assert jobs.run(job_id, kind, args, "w2") == {"name": "web-1", "state": "stopped"}
    vm = jobs.run_and_wait(stop_id)
    assert vm is not None and vm.state == "stopped"
    start_id = jobs.submit_lifecycle("start", "web-1")
    _, kind, args = queue.queued[1]
    for worker in ("w1", "w2"):
        assert jobs.run(start_id, kind, args, worker)["state"] == "running"
    assert w.nodes["kvm1"].calls.count("start") == 1  # the second run found it running


def test_lifecycle_jobs_check_before_queueing() -> None:
    w = world()
    jobs, queue = jobs_of(w)
    with pytest.raises(NotFound):
        jobs.submit_lifecycle("start", "web-9")
    w.svc.create(CreateRequest("web-1"))
    with pytest.raises(InvalidInput):
        jobs.submit_lifecycle("stop", "web-1", timeout=-1)
    with pytest.raises(ValueError, match="not a lifecycle job"):
        jobs.submit_lifecycle("resize", "web-1")
    assert queue.queued == []


def test_a_caller_is_told_when_no_worker_runs() -> None:
    jobs, queue = jobs_of(world())
    assert "none is running now" in jobs.waiting_for()
    queue.workers = 2
    assert jobs.waiting_for() == "waiting for a worker (2 running)"
