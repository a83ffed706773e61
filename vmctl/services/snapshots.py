"""Snapshots of a VM's disks, root and data together: create, list, revert, delete.

Each holds the VM's operation lock and logs an event (``snapshot-create``, ``snapshot-revert``,
``snapshot-delete``; ok or failed). A snapshot is recorded in PostgreSQL only once the node has
it in every disk; when the node fails, nothing is recorded and what the node made is removed.
A running VM's snapshot is taken between the guest agent's fs-freeze and fs-thaw (refused when
the agent cannot freeze, unless ``quiesce`` is False: then it is taken unfrozen if need be).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmctl.core import validation
from vmctl.core.errors import Conflict, NotFound, WrongState
from vmctl.core.records import RECORDED_STATES
from vmctl.core.snapshots import Snapshot

if TYPE_CHECKING:
    from vmctl.core.inventory import Node
    from vmctl.core.records import VmRecord
    from vmctl.services.ports import Hypervisor
    from vmctl.services.vms import VmService

# libvirt's domain states a snapshot can be taken in (running or stopped), as vmctl records them
_STATES = RECORDED_STATES


@dataclass
class _Target:
    """A VM's domain as a snapshot operation finds it."""

    vm: VmRecord
    node: Node
    hv: Hypervisor
    state: str  # "running" or "stopped"
    data_disk: bool


def _target(svc: VmService, name: str) -> _Target:
    """The VM on its node (refused while it is being created or deleted; NotFound without its
    domain), in a state a snapshot can be taken in."""
    from vmctl.services.lifecycle import on_node

    found = on_node(svc, name)
    vm, node = found.record, found.node
    libvirt_state = found.state()
    if libvirt_state not in _STATES:
        raise WrongState(
            f"{vm.name} is {libvirt_state} on node {node.name}: snapshots need it running or "
            "shut off"
        )
    return _Target(vm, node, found.hv, _STATES[libvirt_state], data_disk=vm.disk_gb > 0)


@contextmanager
def _logged(
    svc: VmService, vm: VmRecord, action: str, detail: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Log ``action`` on ``vm`` as failed (with the cause) when the block raises, else as ok
    with ``detail`` as the block left it."""
    node = vm.node
    try:
        yield detail
    except Exception as exc:
        with contextlib.suppress(Exception):  # PostgreSQL down: the cause matters more
            svc.store.add_event(vm.name, node, action, "failed", {**detail, "cause": str(exc)})
        raise
    svc.store.add_event(vm.name, node, action, "ok", detail)


def create(svc: VmService, name: str, snapshot: str, quiesce: bool = True) -> Snapshot:
    """Take snapshot ``snapshot`` of the VM's disks and record it (Conflict if it exists)."""
    snapshot = validation.name(snapshot, "snapshot")
    with svc.locked(validation.name(name), "snapshot-create"):
        vm = svc.get(name)
        detail: dict[str, Any] = {"actor": svc.actor, "snapshot": snapshot}
        with _logged(svc, vm, "snapshot-create", detail):
            try:
                svc.store.get_snapshot(vm.name, snapshot)
            except NotFound:
                pass
            else:
                raise Conflict(f"{vm.name} has a snapshot named {snapshot} already")
            t = _target(svc, vm.name)
            running = t.state == "running"
            detail["vm_state"] = t.state
            svc.progress(f"{vm.name}: taking snapshot {snapshot} ({t.state}) on {t.node.name}")
            quiesced = t.hv.snapshot_create(
                vm.name, t.data_disk, snapshot, running, "yes" if quiesce else "try"
            )
            detail["quiesced"] = quiesced
            try:
                return svc.store.add_snapshot(vm.name, snapshot, t.state, quiesced)
            except Exception:
                with contextlib.suppress(Exception):  # not recorded: not kept either
                    t.hv.snapshot_delete(vm.name, t.data_disk, snapshot, running)
                raise


def list_snapshots(svc: VmService, name: str) -> list[Snapshot]:
    """The VM's snapshots as PostgreSQL records them, oldest first (NotFound: no such VM)."""
    vm = svc.get(name)
    return svc.store.snapshots(vm.name)


def revert(svc: VmService, name: str, snapshot: str) -> VmRecord:
    """Put the VM's disks back to ``snapshot``. A running VM is powered off hard (its state is
    thrown away anyway), reverted and started again; a stopped one stays stopped."""
    snapshot = validation.name(snapshot, "snapshot")
    with svc.locked(validation.name(name), "snapshot-revert"):
        vm = svc.get(name)
        detail: dict[str, Any] = {"actor": svc.actor, "snapshot": snapshot}
        with _logged(svc, vm, "snapshot-revert", detail):
            svc.store.get_snapshot(vm.name, snapshot)
            t = _target(svc, vm.name)
            detail["vm_state"] = t.state
            if t.state == "running":
                svc.progress(f"{vm.name}: powering off to revert to {snapshot}")
                t.hv.destroy(vm.name)
            try:
                t.hv.snapshot_revert(vm.name, t.data_disk, snapshot)
            except NotFound:  # no disk was changed: the VM goes on as it was
                if t.state == "running":
                    t.hv.start(vm.name)
                raise
            except Exception:
                svc.store.set_state(vm.name, "stopped")  # disks may be partly reverted
                raise
            if t.state == "running":
                svc.progress(f"{vm.name}: reverted to {snapshot}, starting it again")
                t.hv.start(vm.name)
                return svc.store.set_state(vm.name, "running")
            return svc.store.set_state(vm.name, "stopped")


def delete(svc: VmService, name: str, snapshot: str) -> None:
    """Delete the snapshot from the VM's disks (those that hold it) and from PostgreSQL."""
    snapshot = validation.name(snapshot, "snapshot")
    with svc.locked(validation.name(name), "snapshot-delete"):
        vm = svc.get(name)
        detail: dict[str, Any] = {"actor": svc.actor, "snapshot": snapshot}
        with _logged(svc, vm, "snapshot-delete", detail):
            svc.store.get_snapshot(vm.name, snapshot)
            t = _target(svc, vm.name)
            detail["vm_state"] = t.state
            on_node = t.hv.snapshots(vm.name)
            missing = sorted(disk for disk, names in on_node.items() if snapshot not in names)
            if missing:
                detail["missing_on_node"] = missing
            if len(missing) < len(on_node):  # the storage deletes it where it is
                t.hv.snapshot_delete(vm.name, t.data_disk, snapshot, t.state == "running")
            svc.store.delete_snapshot(vm.name, snapshot)
