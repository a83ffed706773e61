"""What the watcher's threads share: the VMs to find per node (read from PostgreSQL by the main
thread), what each node's threads report back, and how each node is doing."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace

from vmctl.core.addressing import Lease, Observation
from vmctl.core.records import VmRecord
from vmctl.services.watcher.discovery import Found, match


class Shared:
    """The state of one watcher, behind one lock (``results`` is a queue of its own)."""

    def __init__(self, nodes: Iterable[str]) -> None:
        names = list(nodes)
        self.lock = threading.Lock()
        self.targets: dict[str, dict[str, VmRecord]] = {name: {} for name in names}
        self.wake = {name: threading.Event() for name in names}
        self.node_state = {name: "starting" for name in names}
        # Nodes whose lease file is being followed now, and the leases it last showed.
        self.following: dict[str, tuple[Lease, ...]] = {}
        self.results: queue.Queue[Found] = queue.Queue()

    def vms(self, node: str) -> list[VmRecord]:
        with self.lock:
            return list(self.targets[node].values())

    def report(self, vms: Sequence[VmRecord], found: Sequence[Found]) -> None:
        """Hand the main thread what is new: an address not yet confirmed, or another one."""
        known = {vm.name: vm for vm in vms}
        for f in found:
            vm = known[f.name]
            if f.ip != vm.ip or vm.ip_state != "confirmed":
                self.results.put(f)

    def retarget(self, targets: dict[str, dict[str, VmRecord]]) -> None:
        """Watch ``targets`` (per node, the VMs by name) from now on; a node with a new VM to
        find is woken, and a VM already leased (the follower showed it before this watcher knew
        the VM) is reported at once."""
        leased: list[tuple[list[VmRecord], list[Found]]] = []
        with self.lock:
            for node, now in targets.items():
                before = self.targets[node]
                new = [vm for name, vm in now.items() if name not in before]
                if any(vm.ip_state != "confirmed" for vm in new):
                    self.wake[node].set()  # a new VM to find: look now, not at the idle pace
                self.targets[node] = now
                seen = Observation(leases=self.following.get(node, ()))
                leased.append((new, match(seen, new, ("lease",))))
        for vms, found in leased:
            self.report(vms, found)

    def confirm(self, found: Found) -> None:
        """``found`` is recorded: the VM's address is confirmed."""
        with self.lock:
            vm = self.targets.get(found.node, {}).get(found.name)
            if vm is not None:
                self.targets[found.node][found.name] = replace(
                    vm, ip=found.ip, ip_state="confirmed"
                )

    def follow(self, node: str, leases: Sequence[Lease]) -> list[VmRecord]:
        """The node's lease file shows ``leases`` now; its VMs to match them with."""
        with self.lock:
            self.following[node] = tuple(leases)
            return list(self.targets[node].values())

    def unfollow(self, node: str) -> None:
        with self.lock:
            self.following.pop(node, None)

    def is_followed(self, node: str) -> bool:
        return node in self.following

    def summary(self) -> dict[str, object]:
        """For the heartbeat: how each node is doing, the VMs watched and those still pending."""
        with self.lock:
            watched = sum(len(vms) for vms in self.targets.values())
            pending = sum(
                1
                for vms in self.targets.values()
                for vm in vms.values()
                if vm.ip_state != "confirmed"
            )
            nodes = dict(self.node_state)
        return {"nodes": nodes, "watched": watched, "pending": pending}
