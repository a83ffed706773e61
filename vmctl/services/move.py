"""Moving a VM whose disks are in shared storage (an RBD pool) to another node that shares it,
and draining a node of such VMs.

A move is cold: take room and an address on the target (PostgreSQL, under the claim lock),
define the domain there on the same disks (stopped), shut the VM down where it is, start it on
the target (a VM that was shut off stays so), then remove it from the old node (domain, local
files, DHCP reservation; never the disks) and record the new node and address (the watcher
confirms the address). Until the VM runs on the target, any failure undoes what the move did
there and starts the VM again where it was: it keeps running on its old node. Every step is an
event (``move`` with result ``step``).

A move whose process died half-way (kill -9, a lost manager, a worker's job run again) leaves
``move_node`` on the row. The next move of that VM (or ``vmctl reconcile --fix``) first ends it,
by what the nodes show (``recover``): the VM runs on the target, so the move goes forward (removed
from the old node, the record follows); else what it made on the target is undone and the VM is
started again where it was if the move had shut it down. A move is thus safe to run again.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from vmctl.core import placement, validation
from vmctl.core.errors import CapacityError, InvalidInput, Timeout, VmctlError, WrongState
from vmctl.core.nodecmd import Reservation
from vmctl.core.records import Mark, VmRecord
from vmctl.services.create import disks_of, guest_spec
from vmctl.services.delete import remove_from_node
from vmctl.services.lifecycle import RECORDED, on_node

if TYPE_CHECKING:
    from vmctl.core.inventory import Node
    from vmctl.services.ports import Hypervisor
    from vmctl.services.vms import VmService

POLL_S = 0.5


def check_movable(svc: VmService, vm: VmRecord, source: Node, target: Node | None) -> None:
    """InvalidInput/WrongState unless ``vm`` can move from ``source`` to ``target`` (None: to
    some node): its disks must be in storage that the target shares."""
    storage = svc.storage(source)
    if storage.shared is None:
        raise WrongState(
            f"{vm.name} keeps its disks on node {source.name} itself ({storage.describe()}): "
            "only VMs whose disks are in shared storage (RBD) can move; stop it, or delete "
            "and create it elsewhere"
        )
    if target is None:
        return
    if target.name == source.name:
        raise InvalidInput("to", f"{vm.name} is on node {target.name} already")
    there = svc.storage(target)
    if there.shared != storage.shared:
        raise InvalidInput(
            "to",
            f"node {target.name} keeps disks in {there.describe()}, not in "
            f"{storage.describe()} where {vm.name}'s are: it cannot reach them",
        )


def move(svc: VmService, name: str, to: str, timeout: float = 120.0) -> VmRecord:
    """Move VM ``name`` to node ``to`` (see the module); the VM's record as it is after."""
    validation.seconds("timeout", timeout)
    target = target_of(svc, to)
    with svc.locked(validation.name(name), "move"):
        ended = recover_locked(svc, name, timeout)
        if ended is not None and ended.node == target.name:
            return ended  # an earlier move there, which died half-way, is now done
        return _Move(svc, name, target, timeout).run()


def target_of(svc: VmService, to: str) -> Node:
    """The node named ``to``; InvalidInput naming ``to`` if the inventory has none."""
    try:
        return svc.inventory.node(to)
    except VmctlError as exc:
        raise InvalidInput("to", str(exc)) from exc


def recover(svc: VmService, name: str, timeout: float = 120.0) -> VmRecord | None:
    """End a move of VM ``name`` that died half-way (see the module): the record after it went
    forward or was undone; None if no move of it was under way."""
    with svc.locked(validation.name(name), "move"):
        return recover_locked(svc, name, timeout)


def recover_locked(svc: VmService, name: str, timeout: float = 120.0) -> VmRecord | None:
    """``recover`` for a caller that holds the VM's lock (so no live process works on it)."""
    vm = svc.get(name)
    if vm.move_node is None:
        return None
    source, target = svc.inventory.node(vm.node), svc.inventory.node(vm.move_node)
    src, dst = svc.connect(source), svc.connect(target)
    m = _Move(svc, vm.name, target, timeout, node=source.name)
    here, there = src.state(vm.name), dst.state(vm.name)
    # Forward when it runs on the target, or when the old node's part is gone already (a VM
    # moved shut off, whose move died after removing it there): the target's is all there is.
    if RECORDED.get(there or "") == "running" or (here is None and there is not None):
        if here not in (None, "shut off"):
            raise WrongState(
                f"{vm.name}: a move from {source.name} to {target.name} died half-way and the VM "
                f"is {here} on {source.name} and {there} on {target.name}, on the same disks: "
                f"stop it on one of them (`virsh destroy` there), then run the move again"
            )
        m.step(
            f"an earlier move to {target.name} died after it moved there: going forward",
            ended="forward",
            **{"from": source.name, "to": target.name},
        )
        return m.finish(vm, source, src, dst)
    was = _was(svc, vm.name)
    m.step(
        f"an earlier move to {target.name} died before starting it there: undoing it",
        ended="back",
        **{"from": source.name, "to": target.name},
    )
    m.undo(vm, source, src, dst, defined=True, stopped=(was == "running" and here == "shut off"))
    return svc.get(vm.name)


def _was(svc: VmService, name: str) -> str | None:
    """The VM's state when its last move began (from that move's ``started`` event)."""
    for e in reversed(svc.store.events(vm=name, limit=200)):
        if e["action"] == "move" and e["result"] == "started":
            return str(e["detail"].get("was"))
    return None


@dataclass
class _Move:
    svc: VmService
    name: str
    target: Node
    timeout: float
    steps: list[str] = field(default_factory=list)
    node: str = ""  # where the VM is (events name it)

    def step(self, what: str, **detail: Any) -> None:
        self.steps.append(what)
        self.svc.progress(f"{self.name}: {what}")
        with contextlib.suppress(VmctlError):  # the log must not stop a move half-way
            self.svc.store.add_event(
                self.name,
                self.node,
                "move",
                "step",
                {"actor": self.svc.actor, "step": what, **detail},
            )

    def run(self) -> VmRecord:
        svc = self.svc
        found = on_node(svc, self.name)
        vm, source, src = found.record, found.node, found.hv
        self.node = source.name
        check_movable(svc, vm, source, self.target)
        before = found.state()
        if RECORDED.get(before) not in ("running", "stopped"):
            raise WrongState(
                f"{vm.name} is {before} on node {source.name}: move needs it running or shut off"
            )
        detail = {"actor": svc.actor, "from": source.name, "to": self.target.name, "was": before}
        svc.store.add_event(vm.name, source.name, "move", "started", detail)
        try:
            moved = self._move(vm, source, src, before)
        except BaseException as exc:
            with contextlib.suppress(VmctlError):
                svc.store.add_event(
                    vm.name,
                    source.name,
                    "move",
                    "failed",
                    {**detail, "cause": str(exc) or type(exc).__name__, "steps": self.steps},
                )
            raise
        svc.store.add_event(
            vm.name, self.target.name, "move", "ok", {**detail, "steps": self.steps}
        )
        return moved

    def _move(self, vm: VmRecord, source: Node, src: Hypervisor, before: str) -> VmRecord:
        svc, target = self.svc, self.target
        need = placement.Resources(vm.cpu, vm.ram_mb, 0)  # the disks stay where they are

        def fits(usages: list[Any]) -> None:
            load = next(x for x in svc.loads(usages) if x.name == target.name)
            if not need.fits_in(placement.free(load)):
                left = placement.free(load)
                raise CapacityError(
                    f"node {target.name} has no room for {vm.name} ({vm.cpu} vCPU, "
                    f"{vm.ram_mb} MiB RAM; free there: {left.cpu} vCPU, {left.ram_mb} MiB RAM)"
                )

        held = svc.store.begin_move(vm.name, target.name, fits, target.network.pool())
        dst = svc.connect(target)
        defined = False
        stopped = False
        try:
            address = f", address {held.move_ip} reserved there" if held.move_ip else ""
            self.step(f"room taken on {target.name}{address}", ip=held.move_ip)
            mark = Mark(svc.store.installation_id(), vm.id, vm.name, socket.gethostname())
            spec = guest_spec(svc, target, vm, mark)
            reservation = None
            if held.move_ip is not None:
                reservation = Reservation(target.network.name, vm.mac, held.move_ip)
            defined = True  # from here on, whatever the node made is undone on failure
            dst.create(
                spec, disks_of(svc, vm), {}, start=False, reservation=reservation, adopt=True
            )
            self.step(f"defined on {target.name} with the same disks")
            if before == "running":
                self._shut_down(src, source)
                stopped = True
                self.step(f"shut down on {source.name}")
                dst.start(vm.name)  # a VM shut off stays so: it is only defined there
                self.step(f"started on {target.name}")
        except BaseException as exc:
            svc.progress(f"{self.name}: move failed ({exc or type(exc).__name__}); undoing it")
            self.undo(vm, source, src, dst, defined, stopped)
            raise
        return self.finish(vm, source, src, dst)

    def finish(self, vm: VmRecord, source: Node, src: Hypervisor, dst: Hypervisor) -> VmRecord:
        """It runs on the target: the move goes forward (the old node's part removed, the
        record moved)."""
        svc, target = self.svc, self.target
        try:
            remove_from_node(src, source, vm, svc.store.installation_id(), keep_disks=True)
            self.step(f"removed from {source.name} (domain, local files, reservation; disks kept)")
        except VmctlError as exc:  # reconcile removes it later (domain-without-row, disks kept)
            self.step(f"could not remove it from {source.name}: {exc} (see `vmctl reconcile`)")
        moved = svc.store.end_move(vm.name, done=True)
        self.node = target.name
        with contextlib.suppress(VmctlError):
            svc.cache.set_node(vm.name, target.name)
        state = dst.state(vm.name) or "running"
        return svc.store.set_state(moved.name, RECORDED.get(state, "error"))

    def _shut_down(self, src: Hypervisor, source: Node) -> None:
        self.svc.progress(f"{self.name}: shutting down on {source.name} (up to {self.timeout:g} s)")
        src.shutdown(self.name)
        deadline = time.monotonic() + self.timeout
        while src.state(self.name) != "shut off":
            if time.monotonic() >= deadline:
                raise Timeout(
                    f"{self.name} did not shut down on {source.name} within {self.timeout:g} s "
                    "(the guest did not act on ACPI or its agent); stop it first "
                    "(`vmctl stop --force`) or give a longer --timeout"
                )
            time.sleep(POLL_S)

    def undo(
        self,
        vm: VmRecord,
        source: Node,
        src: Hypervisor,
        dst: Hypervisor,
        defined: bool,
        stopped: bool,
    ) -> None:
        """Back to where the move began: nothing of it on the target, the VM running on its
        node if it was, the room and address on the target given back."""
        svc = self.svc
        if defined:
            try:
                if dst.state(vm.name) not in (None, "shut off"):
                    dst.destroy(vm.name)
                installation = svc.store.installation_id()
                held = svc.store.get(vm.name)
                undo = vm if held.move_ip is None else _with_ip(vm, held.move_ip)
                remove_from_node(dst, self.target, undo, installation, keep_disks=True)
                self.step(f"undone on {self.target.name} (disks kept)")
            except VmctlError as exc:
                self.step(f"could not undo it on {self.target.name}: {exc} (see `vmctl reconcile`)")
        if stopped:
            try:
                src.start(vm.name)
                self.step(f"started again on {source.name}")
            except VmctlError as exc:
                self.step(f"could not start it again on {source.name}: {exc}")
        with contextlib.suppress(VmctlError):
            svc.store.end_move(vm.name, done=False)


def _with_ip(vm: VmRecord, ip: str) -> VmRecord:
    return replace(vm, reserved_ip=ip)


@dataclass(frozen=True)
class DrainPlan:
    moves: list[tuple[str, str]]  # (vm, target node)
    local: list[str]  # VMs whose disks are on the node itself


def plan_drain(svc: VmService, node: str) -> DrainPlan:
    """Where each VM of ``node`` goes: the VMs on shared storage to the nodes that share it
    (placement's spread among them), the others listed as local."""
    source = svc.inventory.node(node)
    vms = [v for v in svc.store.list(node=source.name) if v.state in ("running", "stopped")]
    shared = svc.storage(source).shared
    if shared is None:
        return DrainPlan([], [v.name for v in vms])
    peers = {
        n.name
        for n in svc.inventory.nodes
        if n.name != source.name and svc.storage(n).shared == shared
    }
    if not peers and vms:
        raise CapacityError(f"no other node shares {svc.storage(source).describe()} with {node}")
    usages = svc.store.usage()
    moves = []
    extra: dict[str, placement.Resources] = {}
    for vm in vms:
        loads = [
            _plus(load, extra.get(load.name)) for load in svc.loads(usages) if load.name in peers
        ]
        need = placement.Resources(vm.cpu, vm.ram_mb, 0)
        want = placement.Request(vm.name, need, group=vm.group_name)
        to = placement.place(want, loads)
        moves.append((vm.name, to))
        got = extra.get(to, placement.Resources(0, 0, 0))
        extra[to] = placement.Resources(got.cpu + vm.cpu, got.ram_mb + vm.ram_mb, 0)
    return DrainPlan(moves, [])


@dataclass
class DrainResult:
    moved: list[tuple[str, str]] = field(default_factory=list)  # (vm, node)
    stopped: list[str] = field(default_factory=list)  # local-disk VMs stopped (--stop-local)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (vm, why)


def checked_drain(svc: VmService, node: str, stop_local: bool, timeout: float) -> DrainPlan:
    """The drain's plan; WrongState naming the VMs whose disks are on the node, unless
    ``stop_local``."""
    validation.seconds("timeout", timeout)
    plan = plan_drain(svc, node)
    if plan.local and not stop_local:
        raise WrongState(
            f"node {node} has VMs whose disks are on the node itself and cannot move: "
            f"{', '.join(plan.local)}; --stop-local shuts them down and drains the rest"
        )
    return plan


def drain(
    svc: VmService, node: str, stop_local: bool = False, timeout: float = 120.0
) -> DrainResult:
    """Move every VM of ``node`` on shared storage off it; VMs whose disks are on the node
    refuse the drain (WrongState naming them, nothing moved) unless ``stop_local`` (then they
    are shut down, forced after ``timeout``). One VM's failure does not stop the others."""
    plan = checked_drain(svc, node, stop_local, timeout)
    result = DrainResult()
    for name in plan.local:
        try:
            svc.stop(name, timeout, force=True)
            result.stopped.append(name)
        except VmctlError as exc:
            result.failed.append((name, str(exc)))
    for name, to in plan.moves:
        try:
            move(svc, name, to, timeout)
            result.moved.append((name, to))
        except VmctlError as exc:
            result.failed.append((name, str(exc)))
    return result


def _plus(load: placement.NodeLoad, more: placement.Resources | None) -> placement.NodeLoad:
    if more is None:
        return load
    used = load.used
    return replace(
        load,
        used=placement.Resources(used.cpu + more.cpu, used.ram_mb + more.ram_mb, used.disk_gb),
    )
