"""Day-2 operations on one VM: start, stop, reboot and resize.

Each holds the VM's operation lock, acts on the node its row names, records in PostgreSQL the
state libvirt reports afterwards (libvirt is right about power), and writes an event: who, what,
the result and, when it failed, the cause.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmctl.core import placement, validation
from vmctl.core.errors import InvalidInput, NotFound, Timeout, WrongState
from vmctl.core.records import RECORDED_STATES, VmRecord

if TYPE_CHECKING:
    from vmctl.core.inventory import Node
    from vmctl.services.ports import Hypervisor
    from vmctl.services.vms import VmService

# libvirt's domain states as vmctl records them after an operation: a paused VM still runs;
# anything else (crashed, ...) is an error
RECORDED = {**RECORDED_STATES, "paused": "running"}
POLL_S = 1.0


@dataclass(frozen=True)
class OnNode:
    """A VM's row, its node and that node's hypervisor."""

    record: VmRecord
    node: Node
    hv: Hypervisor

    def state(self) -> str:
        state = self.hv.state(self.record.name)
        if state is None:
            raise NotFound(
                f"{self.record.name} is recorded on node {self.node.name}, but there is no such "
                "domain there (see `vmctl reconcile`)"
            )
        return state


def on_node(svc: VmService, name: str) -> OnNode:
    """The VM's row (refused while it is being created or deleted) and its node."""
    record = svc.get(name)
    if record.state in ("creating", "deleting"):
        raise WrongState(f"{record.name} is {record.state}: wait until that is done")
    node = svc.inventory.node(record.node)
    return OnNode(record, node, svc.connect(node))


def record_state(svc: VmService, vm: OnNode, state: str) -> VmRecord:
    """Record what libvirt says the VM's state is."""
    return svc.store.set_state(vm.record.name, RECORDED.get(state, "error"))


def event(svc: VmService, vm: OnNode, action: str, result: str, **detail: Any) -> None:
    svc.store.add_event(
        vm.record.name, vm.node.name, action, result, {"actor": svc.actor, **detail}
    )


def start(svc: VmService, name: str) -> VmRecord:
    with svc.locked(validation.name(name), "start"):
        vm = on_node(svc, name)
        before = vm.state()
        try:
            if before != "running":
                vm.hv.start(vm.record.name)
        except Exception as exc:
            event(svc, vm, "start", "failed", cause=str(exc))
            raise
        event(svc, vm, "start", "ok", was=before)
        return record_state(svc, vm, vm.state())


def stop(svc: VmService, name: str, timeout: float, force: bool) -> VmRecord:
    """Ask the guest to shut down (ACPI, else the agent) and wait up to ``timeout`` s; then, with
    ``force``, power it off; without, Timeout (the VM keeps running)."""
    validation.seconds("timeout", timeout)
    with svc.locked(validation.name(name), "stop"):
        vm = on_node(svc, name)
        before = vm.state()
        forced = False
        try:
            if before != "shut off":
                vm.hv.shutdown(vm.record.name)
                if not _wait_for(vm, "shut off", timeout):
                    if not force:
                        record_state(svc, vm, vm.state())
                        raise Timeout(
                            f"{vm.record.name} did not shut down within {timeout:g} s (the guest "
                            "did not act on ACPI or its agent); --force powers it off"
                        )
                    vm.hv.destroy(vm.record.name)
                    forced = True
        except Exception as exc:
            event(svc, vm, "stop", "failed", cause=str(exc))
            raise
        event(svc, vm, "stop", "ok", was=before, forced=forced)
        return record_state(svc, vm, vm.state())


def _wait_for(vm: OnNode, state: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if vm.state() == state:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def reboot(svc: VmService, name: str, force: bool) -> VmRecord:
    """Ask the guest to reboot (ACPI, else the agent); ``force``: reset it at once."""
    with svc.locked(validation.name(name), "reboot"):
        vm = on_node(svc, name)
        before = vm.state()
        if before != "running":
            raise WrongState(f"{vm.record.name} is {before}: `vmctl start` it instead")
        try:
            vm.hv.reboot(vm.record.name, force=force)
        except Exception as exc:
            event(svc, vm, "reboot", "failed", cause=str(exc))
            raise
        event(svc, vm, "reboot", "ok", forced=force)
        return record_state(svc, vm, vm.state())


@dataclass(frozen=True)
class Sizes:
    cpu: int
    ram_mb: int
    disk_gb: int

    def describe(self) -> str:
        return f"{self.cpu} vCPU, {self.ram_mb} MiB RAM, {self.disk_gb} GiB data disk"


def resize(
    svc: VmService, name: str, ram: object = None, cpu: object = None, disk: object = None
) -> VmRecord:
    """New vCPUs, RAM or a bigger data disk for a stopped VM. The room is checked under the
    same lock as create's claim; CapacityError names the room left on the VM's node."""
    if ram is None and cpu is None and disk is None:
        raise InvalidInput("resize", "give --ram, --cpu or --disk")
    want_ram = None if ram is None else validation.integer("ram", ram)
    want_cpu = None if cpu is None else validation.integer("cpu", cpu)
    want_disk = None if disk is None else validation.integer("disk", disk)
    with svc.locked(validation.name(name), "resize"):
        vm = on_node(svc, name)
        old = Sizes(vm.record.cpu, vm.record.ram_mb, vm.record.disk_gb)
        new = Sizes(
            old.cpu if want_cpu is None else want_cpu,
            old.ram_mb if want_ram is None else want_ram,
            old.disk_gb if want_disk is None else want_disk,
        )
        _check_disk(vm.record, old, new)
        state = vm.state()
        if state != "shut off":
            raise WrongState(f"{vm.record.name} is {state}: stop it first (`vmctl stop {name}`)")
        if new == old:
            return vm.record
        extra = placement.Resources(
            max(0, new.cpu - old.cpu), max(0, new.ram_mb - old.ram_mb), new.disk_gb - old.disk_gb
        )

        spaces = svc.pool_spaces([vm.node]) if extra.disk_gb else {}

        def fits(usages: list[Any]) -> None:
            load = next(x for x in svc.loads(usages, spaces) if x.name == vm.node.name)
            placement.check_grow(load, vm.record.name, extra)  # no disk asked: 0 GiB fits

        svc.store.resize(vm.record.name, new.cpu, new.ram_mb, new.disk_gb, fits)
        _apply(svc, vm, old, new)
        event(svc, vm, "resize", "ok", before=old.describe(), after=new.describe())
        return svc.get(vm.record.name)


def _check_disk(record: VmRecord, old: Sizes, new: Sizes) -> None:
    if new.disk_gb < old.disk_gb:
        raise InvalidInput(
            "disk",
            f"a data disk only grows: {record.name}'s is {old.disk_gb} GiB, "
            f"{new.disk_gb} GiB asked",
        )
    if new.disk_gb != old.disk_gb and old.disk_gb == 0:
        raise InvalidInput("disk", f"{record.name} has no data disk to grow")


def _apply(svc: VmService, vm: OnNode, old: Sizes, new: Sizes) -> None:
    """The disk first (it cannot be undone), then vCPUs and RAM; the row goes back to what the
    node holds when a step fails."""
    name = vm.record.name
    keep = lambda _usages: None  # noqa: E731 - giving back room needs no check
    try:
        if new.disk_gb != old.disk_gb:
            vm.hv.grow_disk(name, new.disk_gb)
    except Exception as exc:
        svc.store.resize(name, old.cpu, old.ram_mb, old.disk_gb, keep)
        event(svc, vm, "resize", "failed", cause=str(exc), before=old.describe())
        raise
    try:
        if (new.cpu, new.ram_mb) != (old.cpu, old.ram_mb):
            vm.hv.set_resources(name, new.cpu, new.ram_mb)
    except Exception as exc:
        svc.store.resize(name, old.cpu, old.ram_mb, new.disk_gb, keep)
        event(svc, vm, "resize", "failed", cause=str(exc), before=old.describe())
        raise
