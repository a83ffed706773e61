"""Moving VMs over shared storage, draining a node, and placement against a shared pool's room:
the services with fakes (the real thing: tests/e2e/test_rbd.py)."""

import pytest

from tests.unit.fakes import FakeStorage, World, world
from tests.unit.test_jobs import jobs_of, run_next
from vmctl.core.errors import CapacityError, InvalidInput, RemoteCommandFailed, WrongState
from vmctl.core.requests import CreateRequest
from vmctl.services import move as move_service

GiB = 2**30


def shared_world(free_gb: int = 100, stored_gb: int = 0) -> World:
    """kvm1 and kvm2 both keep disks in one shared pool with ``free_gb`` GiB of room."""
    w = world()
    for hv in w.nodes.values():
        hv.storage = FakeStorage(shared="vms@mon")
        hv.storage.space_bytes = (free_gb * GiB, stored_gb * GiB)
    return w


def test_a_running_vm_moves_on_its_disks_and_the_record_follows() -> None:
    w = shared_world()
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    src, dst = w.nodes["kvm1"], w.nodes["kvm2"]
    src.calls.clear()
    moved = w.svc.move("web-1", "kvm2")
    assert moved.node == "kvm2" and moved.state == "running" and moved.move_node is None
    assert [c for c in dst.calls if c != "state"] == ["adopt", "start"]
    assert [c for c in src.calls if c != "state"] == ["shutdown", "delete"]
    assert src.kept_disks == ["web-1"]  # the disks stay: the VM runs on them elsewhere
    assert "web-1" not in src.defined and "web-1" in dst.defined
    assert w.cache.get_node("web-1") == "kvm2"
    events = w.store.events_of("web-1")
    assert events[-1] == ("move", "ok") and ("move", "started") in events
    assert sum(1 for e in events if e == ("move", "step")) >= 4


def test_a_target_that_cannot_start_it_leaves_it_running_where_it_was() -> None:
    w = shared_world()
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    src, dst = w.nodes["kvm1"], w.nodes["kvm2"]
    dst.fail_at["start"] = RemoteCommandFailed("kvm2", "virsh start web-1", 1, "no secret")
    with pytest.raises(RemoteCommandFailed):
        w.svc.move("web-1", "kvm2")
    vm = w.store.get("web-1")
    assert vm.node == "kvm1" and vm.move_node is None and vm.state == "running"
    assert src.states["web-1"] == "running" and "web-1" in src.defined
    assert "web-1" not in dst.defined and dst.kept_disks == ["web-1"]
    assert w.store.events_of("web-1")[-1] == ("move", "failed")


def test_a_vm_on_local_disks_or_another_pool_is_refused_before_anything_happens() -> None:
    w = world()  # both nodes on local disks
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    with pytest.raises(WrongState, match="keeps its disks on node kvm1 itself"):
        w.svc.move("web-1", "kvm2")
    w.nodes["kvm1"].storage = FakeStorage(shared="a@mon")
    w.nodes["kvm2"].storage = FakeStorage(shared="b@mon")
    with pytest.raises(InvalidInput, match="cannot reach them"):
        w.svc.move("web-1", "kvm2")
    with pytest.raises(InvalidInput, match="on node kvm1 already"):
        w.svc.move("web-1", "kvm1")
    with pytest.raises(InvalidInput, match="unknown node 'kvm9'"):
        w.svc.move("web-1", "kvm9")
    assert "adopt" not in w.nodes["kvm2"].calls and w.store.get("web-1").node == "kvm1"


def test_drain_refuses_naming_local_vms_unless_told_to_stop_them() -> None:
    w = world()
    w.svc.create(CreateRequest("db-1", node="kvm1"))
    with pytest.raises(WrongState, match="cannot move: db-1; --stop-local"):
        w.svc.drain("kvm1")
    result = w.svc.drain("kvm1", stop_local=True, timeout=1)
    assert result.stopped == ["db-1"] and result.moved == [] and result.failed == []
    assert w.store.get("db-1").state == "stopped"


def test_drain_moves_every_shared_vm_to_the_nodes_that_share_the_pool() -> None:
    w = shared_world()
    for name in ("web-1", "web-2"):
        w.svc.create(CreateRequest(name, node="kvm1"))
    result = w.svc.drain("kvm1")
    assert result.moved == [("web-1", "kvm2"), ("web-2", "kvm2")] and not result.failed
    assert {vm.node for vm in w.store.list()} == {"kvm2"}


def test_shared_pool_room_counts_the_disks_of_every_node_that_shares_it() -> None:
    w = shared_world(free_gb=10)  # lab defaults: 4 GiB root + 2 GiB data a VM
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    with pytest.raises(CapacityError, match=r"4 GiB disk free in rbd pool vms@mon, 6 GiB asked"):
        w.svc.create(CreateRequest("web-2", node="kvm2"))  # the other node: the same pool
    nodes = {n["name"]: n for n in w.svc.nodes()}
    assert nodes["kvm2"]["disk_gb_used"] == 6 and nodes["kvm2"]["disk_gb_free"] == 4
    assert nodes["kvm1"]["storage"] == "rbd pool vms@mon"


def test_a_pool_whose_room_is_unknown_takes_no_new_disk() -> None:
    w = shared_world()
    for hv in w.nodes.values():
        hv.fail_at["space"] = RemoteCommandFailed("kvm1", "rbd.sh df", 1, "cluster down")
    with pytest.raises(CapacityError, match="room unknown"):
        w.svc.create(CreateRequest("web-1", node="kvm1"))
    assert w.store.list() == []


class Killed(BaseException):
    """The moving process dies here (kill -9): nothing after this runs, no undo."""


def killed_at(monkeypatch: pytest.MonkeyPatch, w: World, node: str, call: str) -> None:
    """The next move dies at ``node``'s ``call`` without undoing anything."""
    monkeypatch.setattr(move_service._Move, "undo", lambda *a, **k: None)
    w.nodes[node].fail_at[call] = Killed()


def survived(monkeypatch: pytest.MonkeyPatch, w: World) -> None:
    monkeypatch.undo()
    for hv in w.nodes.values():
        hv.fail_at.clear()


def died_moving(monkeypatch: pytest.MonkeyPatch, w: World, node: str, call: str) -> None:
    """A move of web-1 to kvm2 dies at ``node``'s ``call``; the next process finds what it left."""
    killed_at(monkeypatch, w, node, call)
    with pytest.raises(Killed):
        w.svc.move("web-1", "kvm2")
    survived(monkeypatch, w)


def test_a_move_that_died_before_the_target_started_it_is_undone_and_the_vm_started_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = shared_world()
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    src, dst = w.nodes["kvm1"], w.nodes["kvm2"]
    died_moving(monkeypatch, w, "kvm2", "start")  # defined there, shut down here: then killed
    assert w.store.get("web-1").move_node == "kvm2" and src.states["web-1"] == "shut off"
    vm = move_service.recover(w.svc, "web-1")  # what `vmctl reconcile --fix` does
    assert vm is not None and vm.node == "kvm1" and vm.move_node is None
    assert src.states["web-1"] == "running"  # it ran before the move: running again
    assert "web-1" not in dst.defined and dst.kept_disks == ["web-1"]
    assert any(d.get("ended") == "back" for *_, d in w.store.logged)
    assert move_service.recover(w.svc, "web-1") is None  # nothing left to end


def test_a_move_that_died_before_anything_moved_is_undone_then_done_by_the_next_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = shared_world()
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    w.svc.stop("web-1", 1)
    died_moving(monkeypatch, w, "kvm2", "adopt")  # room taken on kvm2, nothing there yet
    moved = w.svc.move("web-1", "kvm2")  # the next move ends the dead one, then moves
    assert moved.node == "kvm2" and moved.move_node is None
    assert "web-1" not in w.nodes["kvm1"].defined and "web-1" in w.nodes["kvm2"].defined
    events = w.store.events_of("web-1")
    assert events[-1] == ("move", "ok")
    assert [d["ended"] for *_, d in w.store.logged if "ended" in d] == ["back"]


def test_a_move_that_died_after_the_target_started_it_goes_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = shared_world()
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    src, dst = w.nodes["kvm1"], w.nodes["kvm2"]
    died_moving(monkeypatch, w, "kvm1", "delete")  # runs on kvm2, still defined on kvm1
    assert w.store.get("web-1").node == "kvm1" and dst.states["web-1"] == "running"
    dst.calls.clear()
    moved = w.svc.move("web-1", "kvm2")  # asked again: the earlier one ends, nothing more
    assert moved.node == "kvm2" and moved.move_node is None and moved.state == "running"
    assert "web-1" not in src.defined and src.kept_disks == ["web-1"]
    assert [c for c in dst.calls if c != "state"] == []  # not defined or started twice
    assert w.cache.get_node("web-1") == "kvm2"


def test_a_dead_move_with_the_vm_running_on_both_nodes_is_left_for_the_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = shared_world()
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    died_moving(monkeypatch, w, "kvm1", "delete")
    w.nodes["kvm1"].states["web-1"] = "running"  # someone started it there again
    with pytest.raises(WrongState, match="running on kvm1 and running on kvm2"):
        w.svc.move("web-1", "kvm2")
    assert w.store.get("web-1").move_node == "kvm2"  # untouched


def test_a_move_job_whose_worker_died_is_finished_by_the_next_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = shared_world()
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    jobs, queue = jobs_of(w)
    with pytest.raises(InvalidInput, match="on node kvm1 already"):
        jobs.submit_move("web-1", "kvm1")
    with pytest.raises(WrongState):
        w.nodes["kvm1"].storage = FakeStorage()  # local disks: refused before queueing
        jobs.submit_move("web-1", "kvm2")
    w.nodes["kvm1"].storage = FakeStorage(shared="vms@mon")
    assert queue.queued == []
    job_id = jobs.submit_move("web-1", "kvm2", timeout=5)
    killed_at(monkeypatch, w, "kvm1", "delete")
    with pytest.raises(Killed):
        run_next(jobs, queue, "w1")
    survived(monkeypatch, w)
    assert run_next(jobs, queue, "w2") == {"name": "web-1", "node": "kvm2", "state": "running"}
    assert queue.jobs[job_id].attempts == 2 and queue.jobs[job_id].state == "succeeded"
    # and once more (the second worker died before the queue heard it): still done, no error
    assert run_next(jobs, queue, "w3")["node"] == "kvm2"
    assert jobs.outcome(queue.jobs[job_id]) == w.store.get("web-1")


def test_a_vm_shut_off_moves_shut_off() -> None:
    w = shared_world()
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    w.svc.stop("web-1", 1)
    moved = w.svc.move("web-1", "kvm2")
    assert moved.node == "kvm2" and moved.state == "stopped"
    assert "start" not in w.nodes["kvm2"].calls and w.nodes["kvm2"].states["web-1"] == "shut off"


def test_a_dead_move_of_a_vm_shut_off_whose_old_part_was_removed_goes_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = shared_world()
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    w.svc.stop("web-1", 1)
    monkeypatch.setattr(w.store, "end_move", lambda *a, **k: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        w.svc.move("web-1", "kvm2")  # removed from kvm1, then died before the record followed
    monkeypatch.undo()
    assert "web-1" not in w.nodes["kvm1"].defined and w.store.get("web-1").node == "kvm1"
    vm = move_service.recover(w.svc, "web-1")
    assert vm is not None and vm.node == "kvm2" and vm.state == "stopped"
    assert "web-1" in w.nodes["kvm2"].defined  # not undone: it is the only domain it has


def test_reconcile_fix_ends_a_stuck_move(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmctl.core import drift as dr
    from vmctl.services.reconcile import Reconciler

    w = shared_world()
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    died_moving(monkeypatch, w, "kvm1", "delete")
    stuck = dr.Drift(dr.STUCK_MOVING, "kvm1", "web-1", "row web-1", "stuck", "end the move")
    (action,) = Reconciler.of(w.svc).apply([stuck])
    assert action.result == "fixed", action.detail
    assert "forward: web-1 runs on kvm2" in action.detail
    assert w.store.get("web-1").node == "kvm2" and "web-1" not in w.nodes["kvm1"].defined
    (again,) = Reconciler.of(w.svc).apply([stuck])  # looked at again: not so any more
    assert again.result == "skipped"


def test_drain_with_the_queue_moves_each_vm_by_a_job() -> None:
    import threading

    w = shared_world()
    for name in ("web-1", "web-2"):
        w.svc.create(CreateRequest(name, node="kvm1"))
    jobs, queue = jobs_of(w)
    done = threading.Event()

    def worker() -> None:  # runs each job once it is queued, as `vmctl worker` would
        ran = 0
        while not done.is_set():
            for job_id, kind, args in queue.queued[ran:]:
                jobs.run(job_id, kind, args, "w1")
                ran += 1
            done.wait(0.01)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        result = jobs.drain("kvm1", timeout=5)
    finally:
        done.set()
        thread.join()
    assert sorted(result.moved) == [("web-1", "kvm2"), ("web-2", "kvm2")] and not result.failed
    assert [kind for _, kind, _ in queue.queued] == ["move", "move"]
    assert {w.store.get(n).node for n in ("web-1", "web-2")} == {"kvm2"}
