"""vmctl watch-ip: learn each VM's address as soon as its node knows it.

Per node: a follower streams the DHCP leases the moment the node's DHCP server writes them
(scripts/watch-leases.sh on libvirt's lease file, one long-lived command); a looker runs one
command for the DHCP leases and the ARP table, every ``fast_s`` while one of the node's VMs has no
confirmed address (``following_s`` while the follower is up), every ``idle_s`` otherwise (to catch
changed addresses); the guest agent is asked per VM as a late fallback. Each has its own SSH
connection, so a slow one holds up nothing else. The main thread reads the VM list from
PostgreSQL, writes what the nodes report (``Store.record_ip``: the address, ``ip_state``
confirmed, an ``ip`` event) and announces it on the Redis channel ``vmctl:ip``.

Nothing is lost when something is away: a node that does not answer is retried with backoff; an
address learned while PostgreSQL is down is kept and written when it is back; Redis is optional.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from vmctl.addressing import SOURCES, Lease, Observation, address_from
from vmctl.cache import Cache
from vmctl.errors import RemoteCommandFailed, StoreUnavailable, VmctlError
from vmctl.hypervisor import Hypervisor
from vmctl.inventory import Inventory, Node
from vmctl.logs import fields
from vmctl.store import IpChange, Store, VmRecord

KIND = "watch-ip"  # the heartbeat kind
WATCHED_STATES = ("creating", "running")
BACKOFF_S = (1, 2, 4, 8, 16, 30)
AGENT_TIMEOUT_S = 5  # how long one question to a guest agent may take


@dataclass(frozen=True)
class Found:
    name: str
    node: str
    mac: str
    ip: str
    source: str


@dataclass(frozen=True)
class Timing:
    fast_s: float = 0.5  # a node with VMs waiting for an address is looked at this often
    following_s: float = 2.0  # ... while its lease file is followed (ARP is all a look adds)
    idle_s: float = 5.0  # ... and with none
    refresh_s: float = 1.0  # the VM list is read from PostgreSQL this often
    agent_after_s: float = 30.0  # ask the guest agent once a VM waited this long for DHCP/ARP
    agent_every_s: float = 3.0  # ... and then at most this often
    heartbeat_s: float = 5.0


def agent_address(hv: Hypervisor, vm: VmRecord) -> str | None:
    """The VM's IPv4 address on its vmctl interface as its guest agent reports it."""
    for mac, ip in hv.addresses(vm.name, "agent", timeout_s=AGENT_TIMEOUT_S):
        if mac.lower() == vm.mac.lower():
            address = ipaddress.ip_address(ip)
            if not (address.is_loopback or address.is_link_local):
                return ip
    return None


def discover(
    hv: Hypervisor,
    network: str,
    vms: Sequence[VmRecord],
    sources: Sequence[str],
    use_agent: Callable[[VmRecord], bool] = lambda _vm: True,
) -> list[Found]:
    """Where each VM of one node is, by the first of ``sources`` that knows (one command for the
    leases and the ARP table of all of them; the agent is asked per VM, when ``use_agent``)."""
    batch = any(source in ("lease", "arp") for source in sources)
    seen = hv.observe(network) if batch and vms else Observation()

    def agent(vm: VmRecord) -> str | None:
        return agent_address(hv, vm) if use_agent(vm) else None

    return match(seen, vms, sources, agent)


def match(
    seen: Observation,
    vms: Sequence[VmRecord],
    sources: Sequence[str],
    agent: Callable[[VmRecord], str | None] = lambda _vm: None,
) -> list[Found]:
    """Each VM's address in what a node showed, by the first of ``sources`` that knows it."""
    found = []
    for vm in vms:
        for source in sources:
            ip = agent(vm) if source == "agent" else address_from(seen, vm.mac, source)
            if ip is not None:
                found.append(Found(vm.name, vm.node, vm.mac, ip, source))
                break
    return found


def record(store: Store, cache: Cache, found: Found) -> IpChange | None:
    """Write what a look found to PostgreSQL and, when it changed something, announce it."""
    change = store.record_ip(found.name, found.mac, found.ip, found.source)
    if change is not None:
        cache.publish_ip(change_message(change))
    return change


def change_message(change: IpChange) -> dict[str, Any]:
    """What goes out on the Redis channel for a recorded address."""
    return {
        "name": change.name,
        "node": change.node,
        "ip": change.ip,
        "previous": change.previous,
        "source": change.source,
        "at": change.at.isoformat(),
    }


class Watcher:
    def __init__(
        self,
        inventory: Inventory,
        store: Store,
        cache: Cache,
        connect: Callable[[Node], Hypervisor],
        log: logging.Logger,
        sources: Sequence[str] = SOURCES,
        timing: Timing = Timing(),
        process: str = KIND,
        connect_agent: Callable[[Node], Hypervisor] | None = None,
        connect_follow: Callable[[Node], Hypervisor] | None = None,
        follow: bool = True,
    ) -> None:
        self.inventory = inventory
        self.store = store
        self.cache = cache
        self.connect = connect
        # The agent thread's own connections (an agent that hangs must not hold up the others).
        self.connect_agent = connect_agent or connect
        # ... and the lease follower's (a stream that never ends while the node is up).
        self.connect_follow = connect_follow or connect
        self.log = log
        self.sources = tuple(sources)
        # Leases as the DHCP server writes them: only where a lease is what wins first anyway.
        self.follow = follow and self.sources[:1] == ("lease",)
        self.timing = timing
        self.process = process
        self._lock = threading.Lock()
        self._targets: dict[str, dict[str, VmRecord]] = {n.name: {} for n in inventory.nodes}
        self._wake = {n.name: threading.Event() for n in inventory.nodes}
        self._node_state = {n.name: "starting" for n in inventory.nodes}
        # Nodes whose lease file is being followed now, and the leases it last showed.
        self._following: dict[str, tuple[Lease, ...]] = {}
        self._results: queue.Queue[Found] = queue.Queue()
        self._unsaved: dict[str, Found] = {}
        self._store_down = False

    # -- one pass (watch-ip --once, the API's discovery trigger, waiting without a watcher) -----

    def once(self, names: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[str]]:
        """Look at every node once and record what changed.

        Without ``names``: every VM being watched; rows for the addresses that changed. With
        ``names``: those VMs, the guest agent asked at once, a row for each address found.
        Returns (rows, problems): a problem is a node that could not be looked at.
        """
        if names:
            vms = [self.store.get(name) for name in names]  # NotFound for an unknown name
        else:
            vms = [vm for vm in self.store.list() if vm.state in WATCHED_STATES]
        per_node: dict[str, list[VmRecord]] = {}
        for vm in vms:
            per_node.setdefault(vm.node, []).append(vm)

        def look(node_name: str) -> list[Found]:
            node = self.inventory.node(node_name)
            return discover(
                self.connect(node),
                node.network.name,
                per_node[node_name],
                self.sources,
                use_agent=lambda vm: bool(names) or vm.ip_state != "confirmed",
            )

        rows: list[dict[str, Any]] = []
        problems: list[str] = []
        with ThreadPoolExecutor(max(1, len(per_node))) as pool:
            futures = {name: pool.submit(look, name) for name in per_node}
        for node_name, future in futures.items():
            try:
                found = future.result()
            except VmctlError as exc:
                problems.append(f"node {node_name}: {exc}")
                continue
            for f in found:
                change = self._record(f)
                if change is not None or names:
                    rows.append(
                        {
                            "name": f.name,
                            "node": f.node,
                            "ip": f.ip,
                            "previous": change.previous if change else f.ip,
                            "source": f.source,
                            "changed": change is not None,
                        }
                    )
        return rows, problems

    # -- the service ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop`` is set."""
        self.log.info(
            "watching",
            extra=fields(
                nodes=",".join(self._targets),
                sources=",".join(self.sources),
                follow=self.follow,
                process=self.process,
            ),
        )
        loops = [self._node_loop]
        if "agent" in self.sources:
            loops.append(self._agent_loop)
        if self.follow:
            loops.append(self._follow_loop)
        workers = [
            threading.Thread(target=loop, args=(node, stop), name=f"watch-{node.name}", daemon=True)
            for node in self.inventory.nodes
            for loop in loops
        ]
        for worker in workers:
            worker.start()
        try:
            self._main_loop(stop)
        finally:
            stop.set()
            for event in self._wake.values():
                event.set()
            for worker in workers:
                worker.join(timeout=20)
            with contextlib.suppress(StoreUnavailable):
                self.store.forget_heartbeat(self.process)
            self.log.info("stopped", extra=fields(unsaved=len(self._unsaved)))

    def _main_loop(self, stop: threading.Event) -> None:
        t = self.timing
        next_refresh = next_beat = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_refresh:
                self._refresh()
                next_refresh = now + t.refresh_s
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + t.heartbeat_s
            try:
                found = self._results.get(timeout=max(0.01, next_refresh - time.monotonic()))
            except queue.Empty:
                found = None
            while found is not None:
                self._unsaved[found.name] = found  # the newest report for a VM wins
                try:
                    found = self._results.get_nowait()
                except queue.Empty:
                    found = None
            self._flush()

    def _refresh(self) -> None:
        try:
            vms = self.store.list()
        except StoreUnavailable as exc:
            self._store_failed(exc)
            return
        self._store_back()
        targets: dict[str, dict[str, VmRecord]] = {name: {} for name in self._targets}
        for vm in vms:
            if vm.state in WATCHED_STATES and vm.node in targets:
                targets[vm.node][vm.name] = vm
        leased: list[tuple[list[VmRecord], list[Found]]] = []
        with self._lock:
            for node, now in targets.items():
                before = self._targets[node]
                new = [vm for name, vm in now.items() if name not in before]
                if any(vm.ip_state != "confirmed" for vm in new):
                    self._wake[node].set()  # a new VM to find: look now, not at the idle pace
                self._targets[node] = now
                # leased before this watcher knew the VM: the follower showed it already
                seen = Observation(leases=self._following.get(node, ()))
                leased.append((new, match(seen, new, ("lease",))))
        for vms, found in leased:
            self._report(vms, found)

    def _flush(self) -> None:
        for name, found in list(self._unsaved.items()):
            try:
                self._record(found)
            except StoreUnavailable as exc:
                self._store_failed(exc)
                return
            self._store_back()
            del self._unsaved[name]

    def _record(self, found: Found) -> IpChange | None:
        change = record(self.store, self.cache, found)
        if change is None:
            return None
        with self._lock:
            vm = self._targets.get(found.node, {}).get(found.name)
            if vm is not None:
                self._targets[found.node][found.name] = replace(
                    vm, ip=found.ip, ip_state="confirmed"
                )
        level = logging.INFO
        if change.previous_state == "expected" and change.previous != change.ip:
            level = logging.WARNING  # the DHCP gave another address than the one reserved
        self.log.log(
            level,
            "ip recorded",
            extra=fields(
                vm=change.name,
                node=change.node,
                ip=change.ip,
                previous=change.previous,
                previous_state=change.previous_state,
                source=change.source,
            ),
        )
        return change

    def _heartbeat(self) -> None:
        with self._lock:
            watched = sum(len(vms) for vms in self._targets.values())
            pending = sum(
                1
                for vms in self._targets.values()
                for vm in vms.values()
                if vm.ip_state != "confirmed"
            )
            nodes = dict(self._node_state)
        detail = {"nodes": nodes, "watched": watched, "pending": pending}
        try:
            self.store.heartbeat(self.process, KIND, {**detail, "unsaved": len(self._unsaved)})
        except StoreUnavailable as exc:
            self._store_failed(exc)

    def _store_failed(self, exc: StoreUnavailable) -> None:
        if not self._store_down:
            self._store_down = True
            self.log.warning(
                "PostgreSQL unavailable; addresses are kept until it is back",
                extra=fields(error=str(exc), unsaved=len(self._unsaved)),
            )

    def _store_back(self) -> None:
        if self._store_down:
            self._store_down = False
            self.log.info("PostgreSQL reachable again", extra=fields(unsaved=len(self._unsaved)))

    # -- one node -------------------------------------------------------------------------------

    def _node_loop(self, node: Node, stop: threading.Event) -> None:
        """Leases and ARP table: one command per look, all the node's VMs at once."""
        batch = tuple(source for source in self.sources if source != "agent")

        def look(hv: Hypervisor, vms: list[VmRecord]) -> tuple[list[Found], float]:
            found = discover(hv, node.network.name, vms, batch) if batch else []
            if not any(vm.ip_state != "confirmed" for vm in vms):
                return found, self.timing.idle_s
            following = node.name in self._following
            return found, self.timing.following_s if following else self.timing.fast_s

        self._loop(node, stop, "look", self.connect, look, self._wake[node.name])

    def _agent_loop(self, node: Node, stop: threading.Event) -> None:
        """The guest agent, per VM, for VMs still without an address after ``agent_after_s``.
        Its own thread and connection: an agent that does not answer (5 s) delays nothing else."""
        t = self.timing

        def look(hv: Hypervisor, vms: list[VmRecord]) -> tuple[list[Found], float]:
            now = datetime.now(UTC)
            late = [
                vm
                for vm in vms
                if vm.ip_state != "confirmed"
                and (now - vm.created_at).total_seconds() >= t.agent_after_s
            ]
            found = discover(hv, node.network.name, late, ("agent",)) if late else []
            return found, t.agent_every_s

        self._loop(node, stop, "agent", self.connect_agent, look, threading.Event())

    def _loop(
        self,
        node: Node,
        stop: threading.Event,
        kind: str,
        connect: Callable[[Node], Hypervisor],
        look: Callable[[Hypervisor, list[VmRecord]], tuple[list[Found], float]],
        wake: threading.Event,
    ) -> None:
        """Look at one node until ``stop``; a node that fails is retried with backoff, and
        this thread never dies of an error."""
        failures = 0
        hv: Hypervisor | None = None
        while not stop.is_set():
            with self._lock:
                vms = list(self._targets[node.name].values())
            pause = self.timing.idle_s
            if vms:
                try:
                    if hv is None:
                        hv = connect(node)
                    found, pause = look(hv, vms)
                except Exception as exc:  # a watching thread must never die
                    failures += 1
                    if failures == 1:
                        unexpected = not isinstance(exc, VmctlError)
                        self.log.log(
                            logging.ERROR if unexpected else logging.WARNING,
                            "node unreachable; retrying with backoff",
                            extra=fields(node=node.name, by=kind, error=str(exc)),
                            exc_info=exc if unexpected else None,
                        )
                    if kind == "look":
                        self._node_state[node.name] = "unreachable"
                    if hv is not None:
                        hv.runner.close()  # the next look opens a new connection
                    stop.wait(BACKOFF_S[min(failures, len(BACKOFF_S)) - 1])
                    continue
                if failures:
                    self.log.info(
                        "node reachable again",
                        extra=fields(node=node.name, by=kind, attempts=failures),
                    )
                    failures = 0
                if kind == "look":
                    self._node_state[node.name] = "connected"
                self._report(vms, found)
            wake.wait(pause)
            wake.clear()

    def _report(self, vms: Sequence[VmRecord], found: Sequence[Found]) -> None:
        """Hand the main thread what is new: an address not yet confirmed, or another one."""
        known = {vm.name: vm for vm in vms}
        for f in found:
            vm = known[f.name]
            if f.ip != vm.ip or vm.ip_state != "confirmed":
                self._results.put(f)

    def _follow_loop(self, node: Node, stop: threading.Event) -> None:
        """Leases the moment the node's DHCP server writes them (scripts/watch-leases.sh follows
        libvirt's lease file): no waiting for the next look. While the follower is down (or the
        node's network has no lease file) the looks go on at the fast pace."""
        failures = 0

        def on_leases(leases: list[Lease]) -> None:
            nonlocal failures
            if failures:
                self.log.info("following leases again", extra=fields(node=node.name))
                failures = 0
            with self._lock:
                self._following[node.name] = tuple(leases)
                vms = list(self._targets[node.name].values())
            self._report(vms, match(Observation(leases=tuple(leases)), vms, ("lease",)))

        while not stop.is_set():
            hv = self.connect_follow(node)
            error = "the follower ended"
            try:
                hv.follow_leases(node.network.name, on_leases, stop)
            except RemoteCommandFailed as exc:
                if exc.remote_exit_status == 3:  # no libvirt network: nothing to follow
                    self.log.info(
                        "no lease file to follow; looking at the node instead",
                        extra=fields(node=node.name, error=exc.stderr.strip()),
                    )
                    return
                error = exc.stderr.strip() or str(exc)
            except Exception as exc:  # a watching thread must never die
                error = str(exc)
            finally:
                with self._lock:
                    self._following.pop(node.name, None)
            if stop.is_set():
                return
            failures += 1
            if failures == 1:
                self.log.warning(
                    f"not following leases; looking at the node every {self.timing.fast_s} s"
                    " meanwhile",
                    extra=fields(node=node.name, error=error),
                )
            hv.runner.close()
            stop.wait(BACKOFF_S[min(failures, len(BACKOFF_S)) - 1])
