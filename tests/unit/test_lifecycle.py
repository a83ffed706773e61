"""Day-2 verbs of the VM service over fakes: start, stop, reboot, resize, the per-VM lock and the
audit log. (On real guests: tests/e2e/test_day2.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.unit.fakes import World, world
from vmctl.core import placement, validation
from vmctl.core.errors import (
    Busy,
    CapacityError,
    InvalidInput,
    NotFound,
    Timeout,
    WrongState,
)
from vmctl.core.requests import CreateRequest

pytestmark = pytest.mark.unit


def made(name: str = "web-1", **kw: object) -> World:
    w = world()
    w.svc.create(CreateRequest(name, node="kvm1", **kw))  # type: ignore[arg-type]
    return w


def test_stop_asks_the_guest_and_records_stopped() -> None:
    w = made()
    vm = w.svc.stop("web-1", timeout=5)
    assert vm.state == "stopped" and w.nodes["kvm1"].states["web-1"] == "shut off"
    assert "shutdown" in w.nodes["kvm1"].calls and "destroy" not in w.nodes["kvm1"].calls
    assert w.store.events_of("web-1")[-1] == ("stop", "ok")


def test_stop_of_a_guest_that_ignores_acpi_times_out_unless_forced() -> None:
    w = made()
    w.nodes["kvm1"].ignores_shutdown.add("web-1")
    with pytest.raises(Timeout, match="--force powers it off"):
        w.svc.stop("web-1", timeout=0.01)
    assert w.store.vms["web-1"].state == "running"  # what libvirt says, still
    assert w.store.events_of("web-1")[-1] == ("stop", "failed")
    vm = w.svc.stop("web-1", timeout=0.01, force=True)
    assert vm.state == "stopped" and "destroy" in w.nodes["kvm1"].calls
    assert w.store.logged[-1][4]["forced"] is True


def test_start_records_running_and_a_running_vm_is_left_alone() -> None:
    w = made()
    w.svc.stop("web-1", timeout=5)
    assert w.svc.start("web-1").state == "running"
    w.nodes["kvm1"].calls.clear()
    assert w.svc.start("web-1").state == "running"
    assert "start" not in w.nodes["kvm1"].calls


def test_reboot_needs_a_running_vm_and_force_resets() -> None:
    w = made()
    w.svc.reboot("web-1", force=True)
    assert "reset" in w.nodes["kvm1"].calls
    w.svc.stop("web-1", timeout=5)
    with pytest.raises(WrongState, match="start"):
        w.svc.reboot("web-1")


def test_a_vm_whose_domain_is_gone_is_not_found_naming_reconcile() -> None:
    w = made()
    w.nodes["kvm1"].defined.discard("web-1")
    with pytest.raises(NotFound, match="reconcile"):
        w.svc.start("web-1")


def test_a_vm_being_created_or_deleted_is_refused() -> None:
    w = made()
    w.store.set_state("web-1", "deleting")
    with pytest.raises(WrongState, match="deleting"):
        w.svc.stop("web-1")


def test_resize_needs_a_stopped_vm() -> None:
    w = made()
    with pytest.raises(WrongState, match="stop it first"):
        w.svc.resize("web-1", ram=1024)
    assert w.store.vms["web-1"].ram_mb == 512


def test_resize_applies_on_the_node_and_records_the_new_sizes() -> None:
    w = made()
    w.svc.stop("web-1", timeout=5)
    vm = w.svc.resize("web-1", ram="768", cpu=2, disk=5)
    assert (vm.cpu, vm.ram_mb, vm.disk_gb) == (2, 768, 5)
    assert w.nodes["kvm1"].sizes["web-1"] == (2, 768) and w.nodes["kvm1"].disks["web-1"] == 5
    assert w.store.events_of("web-1")[-1] == ("resize", "ok")


@pytest.mark.parametrize(
    ("change", "field"),
    [({"disk": 1}, "disk"), ({"ram": "lots"}, "ram"), ({"cpu": 0}, "cpu"), ({}, "resize")],
)
def test_resize_refuses_bad_input_before_touching_anything(change: dict, field: str) -> None:  # type: ignore[type-arg]
    w = made()
    w.svc.stop("web-1", timeout=5)
    w.nodes["kvm1"].calls.clear()
    with pytest.raises(InvalidInput) as caught:
        w.svc.resize("web-1", **change)
    assert caught.value.field == field
    assert "set_resources" not in w.nodes["kvm1"].calls and w.store.vms["web-1"].disk_gb == 2


def test_resize_beyond_the_node_names_the_room_left() -> None:
    w = made(ram_mb=4096)
    w.svc.create(CreateRequest("web-2", node="kvm1", ram_mb=3072))
    w.svc.stop("web-1", timeout=5)
    with pytest.raises(CapacityError, match=r"1024 MiB RAM free, 2048 MiB asked"):
        w.svc.resize("web-1", ram=6144)
    assert w.store.vms["web-1"].ram_mb == 4096 and "web-1" not in w.nodes["kvm1"].sizes


def test_a_failed_node_step_puts_the_row_back() -> None:
    from vmctl.core.errors import RemoteCommandFailed

    w = made()
    w.svc.stop("web-1", timeout=5)
    w.nodes["kvm1"].fail_at["set_resources"] = RemoteCommandFailed("kvm1", "virsh", 1, "no")
    with pytest.raises(RemoteCommandFailed):
        w.svc.resize("web-1", cpu=4, disk=3)
    vm = w.store.vms["web-1"]
    assert (vm.cpu, vm.disk_gb) == (1, 3)  # the disk grew (it cannot shrink back); vCPUs did not
    assert w.store.events_of("web-1")[-1] == ("resize", "failed")


def test_an_operation_on_a_vm_another_one_holds_is_busy() -> None:
    w = made()
    with w.store.vm_lock("web-1", "resize", 0):
        with pytest.raises(Busy, match="resize"):
            w.svc.stop("web-1")
        with pytest.raises(Busy):
            w.svc.delete("web-1")
    assert w.store.vms["web-1"].state == "running"
    w.svc.stop("web-1", timeout=5)  # and once it is let go, it runs


def test_events_of_one_vm_survive_its_delete() -> None:
    w = made()
    w.svc.delete("web-1")
    assert [e["action"] for e in w.svc.events("web-1")] == ["create", "create", "delete"]
    assert w.svc.events("web-1", limit=1)[0]["action"] == "delete"


def test_since_takes_an_age_or_an_iso_time() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert validation.since("15m", now) == now - timedelta(minutes=15)
    assert validation.since("2d", now) == now - timedelta(days=2)
    assert validation.since("2026-12-01", now) == datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="since"):
        validation.since("yesterday", now)


def test_check_grow_names_what_is_short_and_the_free_room() -> None:
    node = placement.NodeLoad(
        "kvm1",
        placement.Resources(4, 4096, 100),
        1.0,
        1.0,
        1.0,
        used=placement.Resources(3, 1024, 10),
    )
    placement.check_grow(node, "web-1", placement.Resources(1, 3072, 90))
    with pytest.raises(CapacityError) as caught:
        placement.check_grow(node, "web-1", placement.Resources(2, 0, 0))
    assert "1 vCPU free, 2 asked" in str(caught.value)
    assert "free there: 1 vCPU, 3072 MiB RAM, 90 GiB disk" in str(caught.value)
