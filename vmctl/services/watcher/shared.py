"""What the watcher's threads share: the VMs to find per node (kept up to date by the main thread
from what changed in PostgreSQL), what each node's threads report back, and how each node is
doing."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace

from vmctl.core.addressing import Lease, Observation
from vmctl.core.records import WatchChanges, WatchTarget
from vmctl.services.watcher.discovery import Found, match_shown


class NodeTargets:
    """One node's watched VMs: by name, by MAC, and those still waiting for an address."""

    __slots__ = ("by_mac", "by_name", "waiting")

    def __init__(self) -> None:
        self.by_name: dict[str, WatchTarget] = {}
        self.by_mac: dict[str, WatchTarget] = {}
        self.waiting: dict[str, WatchTarget] = {}

    def put(self, vm: WatchTarget) -> None:
        self.drop(vm.name)
        self.by_name[vm.name] = vm
        self.by_mac[vm.mac] = vm
        if vm.waiting:
            self.waiting[vm.name] = vm

    def drop(self, name: str) -> None:
        vm = self.by_name.pop(name, None)
        if vm is not None:
            if self.by_mac.get(vm.mac) is vm:
                del self.by_mac[vm.mac]
            self.waiting.pop(name, None)


class Shared:
    """The state of one watcher, behind one lock (``results`` is a queue of its own).

    The nodes' threads never copy a node's VMs: they match what a node shows against them by
    MAC, under the lock, so a look costs what the node shows, not the number of VMs watched."""

    def __init__(self, nodes: Iterable[str]) -> None:
        names = list(nodes)
        self.lock = threading.Lock()
        self.targets: dict[str, NodeTargets] = {name: NodeTargets() for name in names}
        self._node_of: dict[str, str] = {}  # VM name -> the node it is watched on
        self.wake = {name: threading.Event() for name in names}
        self.node_state = {name: "starting" for name in names}
        # Nodes whose lease file is being followed now, and the leases it last showed.
        self.following: dict[str, tuple[Lease, ...]] = {}
        self.results: queue.Queue[Found] = queue.Queue()

    # -- what the node threads ask ---------------------------------------------------------

    def watched(self, node: str) -> int:
        with self.lock:
            return len(self.targets[node].by_name)

    def waiting(self, node: str) -> list[WatchTarget]:
        """The node's VMs with no confirmed address yet."""
        with self.lock:
            return list(self.targets[node].waiting.values())

    def match(self, node: str, seen: Observation, sources: Sequence[str]) -> list[Found]:
        """The node's VMs in what it showed (batch sources only)."""
        with self.lock:
            return match_shown(seen, self.targets[node].by_mac, sources)

    def report(self, found: Sequence[Found]) -> None:
        """Hand the main thread what is new: an address not yet confirmed, or another one."""
        with self.lock:
            new = []
            for f in found:
                vm = self.targets.get(f.node, NodeTargets()).by_name.get(f.name)
                if vm is not None and (vm.waiting or f.ip != vm.ip):
                    new.append(f)
        for f in new:
            self.results.put(f)

    # -- what the main thread says ---------------------------------------------------------

    def apply(self, changes: WatchChanges) -> None:
        """Watch what ``changes`` says from now on; a node with a new VM to find is woken, and
        a VM already leased (the follower showed it before this watcher knew the VM) is
        reported at once."""
        woken: set[str] = set()
        found: list[Found] = []
        with self.lock:
            self._forget(list(self._node_of) if changes.whole else changes.gone)
            new_by_node: dict[str, dict[str, WatchTarget]] = {}
            for vm in changes.vms:
                before = self._node_of.get(vm.name)
                known = self.targets[before].by_name.get(vm.name) if before == vm.node else None
                self._forget([vm.name])
                targets = self.targets.get(vm.node)
                if targets is None:  # on a node this watcher does not watch
                    continue
                targets.put(vm)
                self._node_of[vm.name] = vm.node
                if vm.waiting and (known is None or not known.waiting):
                    woken.add(vm.node)  # a new VM to find: look now, not at the idle pace
                if known is None:
                    new_by_node.setdefault(vm.node, {})[vm.mac] = vm
            for node, new in new_by_node.items():
                seen = Observation(leases=self.following.get(node, ()))
                found += match_shown(seen, new, ("lease",))
        for node in woken:
            self.wake[node].set()
        self.report(found)

    def _forget(self, names: Iterable[str]) -> None:
        for name in list(names):
            node = self._node_of.pop(name, None)
            if node is not None:
                self.targets[node].drop(name)

    def confirm(self, found: Found) -> None:
        """``found`` is recorded: the VM's address is confirmed."""
        with self.lock:
            targets = self.targets.get(found.node)
            vm = targets.by_name.get(found.name) if targets else None
            if targets is not None and vm is not None:
                targets.put(replace(vm, ip=found.ip, ip_state="confirmed"))

    # -- the lease follower ----------------------------------------------------------------

    def follow(self, node: str, leases: Sequence[Lease]) -> list[Found]:
        """The node's lease file shows ``leases`` now: the node's VMs in them."""
        with self.lock:
            self.following[node] = tuple(leases)
            seen = Observation(leases=tuple(leases))
            return match_shown(seen, self.targets[node].by_mac, ("lease",))

    def unfollow(self, node: str) -> None:
        with self.lock:
            self.following.pop(node, None)

    def is_followed(self, node: str) -> bool:
        return node in self.following

    def summary(self) -> dict[str, object]:
        """For the heartbeat: how each node is doing, the VMs watched and those still pending."""
        with self.lock:
            watched = sum(len(t.by_name) for t in self.targets.values())
            pending = sum(len(t.waiting) for t in self.targets.values())
            nodes = dict(self.node_state)
        return {"nodes": nodes, "watched": watched, "pending": pending}
