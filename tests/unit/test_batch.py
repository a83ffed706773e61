"""`create --count`: the VMs made side by side, the node work bounded per node, one VM's failure
rolled back alone. Concurrency is shown with barriers (the creates meet inside the node work,
or the test fails), never with timings."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from tests.unit.fakes import World, world
from tests.unit.test_vm_service import BOOM
from vmctl.core.errors import InvalidInput
from vmctl.core.requests import CreateRequest

pytestmark = pytest.mark.unit


def requests(prefix: str, n: int, **kw: Any) -> list[CreateRequest]:
    return [CreateRequest(f"{prefix}-{i}", **kw) for i in range(1, n + 1)]


class Meeting:
    """Makes each node's ``create`` wait until ``parties`` creates are inside node work at once
    (BrokenBarrierError after 10 s otherwise), and counts how many ever were, per node."""

    def __init__(self, w: World, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)
        self.lock = threading.Lock()
        self.inside: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        for hv in w.nodes.values():
            hv.create = self._wrap(hv, hv.create)  # type: ignore[method-assign]

    def _wrap(self, hv: Any, create: Any) -> Any:
        def wrapped(*args: Any, **kw: Any) -> None:
            with self.lock:
                self.inside[hv.node] += 1
                self.most[hv.node] = max(self.most[hv.node], self.inside[hv.node])
            try:
                self.barrier.wait()
                time.sleep(0.05)  # room for a create beyond the bound to come in, if one could
                create(*args, **kw)
            finally:
                with self.lock:
                    self.inside[hv.node] -= 1

        return wrapped


def test_vms_on_two_nodes_are_built_at_the_same_time() -> None:
    w = world()
    meeting = Meeting(w, parties=2)
    w.svc.per_node = 1
    outcomes = w.svc.create_many(requests("web", 2), None, 60)
    assert [o.name for o in outcomes] == ["web-1", "web-2"]
    assert all(o.error is None for o in outcomes)
    assert {o.vm.node for o in outcomes if o.vm} == {"kvm1", "kvm2"}  # spread
    assert meeting.most == {"kvm1": 1, "kvm2": 1}


@pytest.mark.parametrize("per_node", [1, 2, 3])
def test_node_work_on_one_node_is_bounded(per_node: int) -> None:
    w = world()
    w.svc.per_node = per_node
    meeting = Meeting(w, parties=per_node)  # each round of node work meets at the bound
    outcomes = w.svc.create_many(requests("db", 2 * per_node, node="kvm1"), None, 60)
    assert all(o.vm is not None and o.vm.node == "kvm1" for o in outcomes)
    assert meeting.most["kvm1"] == per_node


def test_one_failure_is_rolled_back_alone_and_the_others_are_made() -> None:
    w = world()
    hv = w.nodes["kvm1"]
    real_create = hv.create

    def create(spec: Any, *args: Any, **kw: Any) -> None:
        if spec.name == "app-2":
            raise BOOM
        real_create(spec, *args, **kw)

    hv.create = create  # type: ignore[method-assign]
    outcomes = w.svc.create_many(requests("app", 4, node="kvm1"), None, 60)
    failed = [o for o in outcomes if o.error is not None]
    assert [o.name for o in failed] == ["app-2"]
    assert failed[0].error is BOOM
    assert sorted(w.store.vms) == ["app-1", "app-3", "app-4"]
    assert hv.defined == {"app-1", "app-3", "app-4"}
    assert ("create", "failed") in w.store.events_of("app-2")
    assert "app-2" not in w.cache.nodes


def test_each_vm_is_waited_for() -> None:
    w = world()
    outcomes = w.svc.create_many(requests("w", 3), "ip", 0.5)
    # No watcher and the fakes report no address: each VM's own wait times out, after its create.
    assert [type(o.error).__name__ for o in outcomes] == ["Timeout"] * 3
    assert sorted(w.store.vms) == ["w-1", "w-2", "w-3"]  # made, not ready: kept, as with one VM


def test_bad_input_in_one_request_makes_none() -> None:
    w = world()
    batch = [*requests("ok", 2), CreateRequest("Bad_Name")]
    with pytest.raises(InvalidInput):
        w.svc.create_many(batch, None, 60)
    assert w.store.vms == {} and w.nodes["kvm1"].calls == [] and w.nodes["kvm2"].calls == []
