"""Moving VMs over shared storage, draining a node, and placement against a shared pool's room:
the services with fakes (the real thing: tests/e2e/test_rbd.py)."""

import pytest

from tests.unit.fakes import FakeStorage, World, world
from vmctl.core.errors import CapacityError, InvalidInput, RemoteCommandFailed, WrongState
from vmctl.core.requests import CreateRequest

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
