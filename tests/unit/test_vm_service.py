"""The VM service through its ports: create, rollback (each step failing in turn, PostgreSQL down
during the rollback), delete (stale cache, node unreachable) and wait, with in-memory fakes."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from tests.unit.fakes import KEY, World, world
from vmctl.core.errors import (
    Conflict,
    GuestFailed,
    InvalidInput,
    NodeUnreachable,
    NotFound,
    RemoteCommandFailed,
    StoreUnavailable,
    Timeout,
)
from vmctl.core.requests import CreateRequest
from vmctl.services.ports import CloudInit

pytestmark = pytest.mark.unit

BOOM = RemoteCommandFailed("kvm1", "create-vm.sh --name web-1", 3, "qemu-img: disk full")


def nothing_left(w: World, name: str) -> None:
    assert name not in w.store.vms
    assert name not in w.cache.nodes
    assert all(name not in hv.defined for hv in w.nodes.values())


# -- create ------------------------------------------------------------------------------------


def test_create_fills_defaults_records_and_caches() -> None:
    w = world()
    vm = w.svc.create(CreateRequest("web-1", node="kvm2"))
    assert (vm.name, vm.node, vm.state) == ("web-1", "kvm2", "running")
    assert (vm.ram_mb, vm.cpu, vm.disk_gb, vm.root_gb) == (512, 1, 2, 4)
    assert w.nodes["kvm2"].defined == {"web-1"}
    assert w.cache.nodes == {"web-1": "kvm2"}
    assert w.store.events_of("web-1") == [("create", "started"), ("create", "ok")]


def test_bad_input_touches_nothing() -> None:
    w = world()
    for req in (
        CreateRequest("Web_1"),
        CreateRequest("web-1", ram_mb="lots"),
        CreateRequest("web-1", node="kvm9"),
        CreateRequest("web-1", policy="random"),
        CreateRequest("web-1", authorized_keys=["not a key"]),
    ):
        with pytest.raises(InvalidInput):
            w.svc.create(req)
    assert w.store.vms == {} and w.store.logged == [] and w.nodes["kvm1"].calls == []


def test_a_taken_name_is_a_conflict() -> None:
    w = world()
    w.svc.create(CreateRequest("web-1"))
    with pytest.raises(Conflict):
        w.svc.create(CreateRequest("web-1"))


# Each step after the claim, failing in turn: the cause comes out, nothing is left.
STEPS = [
    ("store", "add_event:started", StoreUnavailable("PostgreSQL went away")),
    ("node", "create", BOOM),
    ("store", "set_state:running", StoreUnavailable("PostgreSQL went away")),
    ("cache", "set_node", RuntimeError("redis client bug")),
]


@pytest.mark.parametrize(("where", "call", "error"), STEPS, ids=[s[1] for s in STEPS])
def test_a_failing_step_is_rolled_back_and_reported(
    where: str, call: str, error: Exception
) -> None:
    w = world()
    target = {"store": w.store, "cache": w.cache, "node": w.nodes["kvm1"]}[where]
    target.fail_at[call] = error
    with pytest.raises(type(error)) as caught:
        w.svc.create(CreateRequest("web-1", node="kvm1"))
    assert caught.value is error
    nothing_left(w, "web-1")
    assert ("create", "failed") in w.store.events_of("web-1")


def test_an_unreachable_node_is_rolled_back() -> None:
    w = world(unreachable={"kvm1"})
    with pytest.raises(NodeUnreachable):
        w.svc.create(CreateRequest("web-1", node="kvm1"))
    nothing_left(w, "web-1")


def test_a_node_missing_from_the_inventory_after_the_claim_frees_the_row() -> None:
    """The row's node is looked up after the claim commits: a failure there (the inventory
    changed under a running create) must still give the capacity back."""
    w = world()
    real_node = w.svc.inventory.node
    calls = []

    def node(name: str):  # type: ignore[no-untyped-def]
        calls.append(name)
        if len(calls) > 1:  # the check's look-up passes; the one after the claim fails
            raise NotFound(f"unknown node {name!r}")
        return real_node(name)

    object.__setattr__(w.svc.inventory, "node", node)
    with pytest.raises(NotFound):
        w.svc.create(CreateRequest("web-1", node="kvm1"))
    nothing_left(w, "web-1")


def test_postgres_down_during_the_rollback_keeps_the_real_cause() -> None:
    w = world()
    w.nodes["kvm1"].fail_at["create"] = BOOM
    w.store.fail_at["delete"] = StoreUnavailable("PostgreSQL went away")
    w.store.fail_at["add_event:failed"] = StoreUnavailable("PostgreSQL went away")
    with pytest.raises(RemoteCommandFailed) as caught:
        w.svc.create(CreateRequest("web-1", node="kvm1"))
    assert caught.value is BOOM
    assert w.nodes["kvm1"].defined == set()  # the node's part is removed all the same
    assert any("could not clean up the database row" in line for line in w.told)
    assert any("could not record the failure" in line for line in w.told)


def test_a_rollback_the_node_refuses_leaves_the_row_deleting_until_the_node_answers() -> None:
    w = world()
    w.nodes["kvm1"].fail_at["create"] = BOOM
    w.nodes["kvm1"].fail_at["delete"] = NodeUnreachable("node kvm1: connection lost")
    with pytest.raises(RemoteCommandFailed):
        w.svc.create(CreateRequest("web-1", node="kvm1"))
    # never recorded as running; the row keeps the room the node's leftovers take
    assert w.store.vms["web-1"].state == "deleting" and "web-1" not in w.cache.nodes
    failed = [e for e in w.store.logged if e[3] == "failed"]
    assert failed[0][4]["cleanup_problems"] == ["node: node kvm1: connection lost"]
    del w.nodes["kvm1"].fail_at["delete"]
    w.svc.delete("web-1")  # what reconcile's fix of a stuck `deleting` row comes to
    nothing_left(w, "web-1")


# -- delete ------------------------------------------------------------------------------------


def test_delete_goes_to_the_rows_node_not_a_stale_cache_entry() -> None:
    w = world()
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    w.cache.nodes["web-1"] = "kvm2"  # stale: the VM was on kvm2 once
    w.svc.delete("web-1")
    assert w.nodes["kvm1"].defined == set()
    assert w.nodes["kvm2"].calls == []
    nothing_left(w, "web-1")
    assert w.store.events_of("web-1")[-1] == ("delete", "ok")


def test_delete_on_an_unreachable_node_stays_deleting_and_completes_later() -> None:
    w = world()
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    w.nodes["kvm1"].fail_at["delete"] = NodeUnreachable("node kvm1: connection lost")
    with pytest.raises(NodeUnreachable, match="stays recorded as deleting"):
        w.svc.delete("web-1")
    assert w.store.vms["web-1"].state == "deleting"
    assert w.store.events_of("web-1")[-1] == ("delete", "failed")
    assert w.store.logged[-1][4]["pending"] is True
    assert "web-1" in w.cache.nodes  # forgotten with the row, once the node answers


def test_delete_refused_by_the_node_marks_the_vm_error() -> None:
    w = world()
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    w.nodes["kvm1"].fail_at["delete"] = BOOM
    with pytest.raises(RemoteCommandFailed):
        w.svc.delete("web-1")
    assert w.store.vms["web-1"].state == "error"  # not `deleting`: no one finishes it alone


def test_delete_of_an_unknown_vm_is_not_found() -> None:
    with pytest.raises(NotFound):
        world().svc.delete("web-9")


# -- wait --------------------------------------------------------------------------------------


def booted() -> World:
    """web-1 made, its address confirmed, SSH answering with its host key."""
    w = world()
    vm = w.svc.create(CreateRequest("web-1", node="kvm1"))
    w.store.vms["web-1"] = replace(vm, ip="10.9.1.5", ip_state="confirmed")
    assert vm.host_key is not None
    w.probe.keys["10.9.1.5"] = " ".join(vm.host_key.split()[:2])
    return w


def test_wait_until_ssh_answers_with_the_vms_host_key() -> None:
    w = booted()
    got = w.svc.wait("web-1", timeout=5, until="ssh")
    assert got.ip == "10.9.1.5"
    assert any("SSH answers" in line for line in w.told)


def test_wait_for_cloud_init_asks_the_probe() -> None:
    w = booted()
    assert w.svc.wait("web-1", timeout=5).name == "web-1"
    assert any("cloud-init finished" in line for line in w.told)


def test_wait_reports_cloud_init_errors() -> None:
    w = booted()
    w.probe.init = CloudInit("error", "status: error\nmodule scripts_user failed")
    with pytest.raises(GuestFailed, match="module scripts_user failed"):
        w.svc.wait("web-1", timeout=5)


def test_wait_times_out_naming_the_step_and_the_console_log() -> None:
    w = world()
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    started = time.monotonic()
    with pytest.raises(Timeout) as caught:
        w.svc.wait("web-1", timeout=0.3, until="ip")
    assert time.monotonic() - started < 3
    assert "stuck at step 'ip'" in str(caught.value)
    assert "/srv/vms/web-1/console.log" in str(caught.value)


@pytest.mark.parametrize("timeout", [-5, 0, float("inf"), float("nan")])
def test_wait_refuses_a_timeout_that_is_not_positive(timeout: float) -> None:
    w = world()
    w.svc.create(CreateRequest("web-1"))
    with pytest.raises(InvalidInput) as caught:
        w.svc.wait("web-1", timeout=timeout)
    assert caught.value.field == "timeout"


def test_the_default_keys_go_into_the_guest_unless_the_request_has_its_own() -> None:
    w = world()
    assert w.svc.check(CreateRequest("web-1")).name == "web-1"
    with pytest.raises(InvalidInput):
        w.svc.check(CreateRequest("web-1", authorized_keys=[]))
    assert w.svc.check(CreateRequest("web-1", authorized_keys=[KEY])).name == "web-1"
