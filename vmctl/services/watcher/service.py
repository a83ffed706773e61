"""The watcher: one thread per node and kind of look (``node.NodeWatch``), and the main loop that
reads the VM list from PostgreSQL, records what the nodes report and announces it; or one pass
over every node (``Watcher.once``)."""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from vmctl.core.addressing import SOURCES
from vmctl.core.errors import StoreUnavailable, VmctlError
from vmctl.core.logfields import fields
from vmctl.core.records import IpChange, WatchTarget
from vmctl.services.ports import (
    AllNodes,
    Cache,
    Connect,
    NodeShares,
    NoMetrics,
    Store,
    WatchMetrics,
)
from vmctl.services.watcher.discovery import Found, discover, record
from vmctl.services.watcher.drift import DriftWatch
from vmctl.services.watcher.node import NodeWatch
from vmctl.services.watcher.shared import Shared
from vmctl.services.watcher.timing import DEFAULT_TIMING, Timing

if TYPE_CHECKING:
    from vmctl.core.inventory import Inventory, Node

KIND = "watch-ip"  # the heartbeat kind
WATCHED_STATES = ("creating", "running")


class Watcher:
    def __init__(
        self,
        inventory: Inventory,
        store: Store,
        cache: Cache,
        connect: Connect,
        log: logging.Logger,
        sources: Sequence[str] = SOURCES,
        timing: Timing = DEFAULT_TIMING,
        process: str = KIND,
        connect_agent: Connect | None = None,
        connect_follow: Connect | None = None,
        follow: bool = True,
        metrics: WatchMetrics | None = None,
        shares: NodeShares | None = None,
    ) -> None:
        self.inventory = inventory
        # Which nodes to watch: all of them, or a share when several watchers divide them.
        self.shares: NodeShares = shares or AllNodes()
        self.metrics: WatchMetrics = metrics or NoMetrics()
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
        self.reconcile_every = 0.0  # seconds between reconcile reports; 0: none
        self.drift: DriftWatch | None = None
        self._shared = Shared(n.name for n in inventory.nodes)
        self._unsaved: dict[str, Found] = {}
        self._store_down = False
        self._read_at: int | None = None  # the vms_version the VMs to watch were read at
        self._watching: dict[str, threading.Event] = {}  # node -> what stops its threads
        self._threads: list[threading.Thread] = []

    # -- one pass (watch-ip --once, the API's discovery trigger, waiting without a watcher) -----

    def once(self, names: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[str]]:
        """Look at every node once and record what changed.

        Without ``names``: every VM being watched; rows for the addresses that changed. With
        ``names``: those VMs, the guest agent asked at once, a row for each address found.
        Returns (rows, problems): a problem is a node that could not be looked at.
        """
        if names:
            # NotFound for an unknown name
            vms = [WatchTarget.of(self.store.get(name)) for name in names]
        else:
            vms = self.store.watch_changes(None, WATCHED_STATES).vms
        per_node: dict[str, list[WatchTarget]] = {}
        for vm in vms:
            per_node.setdefault(vm.node, []).append(vm)

        def look(node_name: str) -> list[Found]:
            node = self.inventory.node(node_name)
            return discover(
                self.connect(node),
                node.network.name,
                per_node[node_name],
                self.sources,
                use_agent=lambda vm: bool(names) or vm.waiting,
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
                    rows.append(_row(f, change))
        return rows, problems

    # -- the periodic reconcile report (watcher/drift.py) ------------------------------------

    def reconcile_periodically(self, every: float, connect: Connect | None = None) -> None:
        """While running, every ``every`` s (0: never): `vmctl reconcile` in report mode in a
        thread of its own (over ``connect``'s connections, so address learning never waits for
        it); each new drift item becomes an event, and pending deletes are completed."""
        self.drift = DriftWatch(
            self.inventory,
            self.store,
            self.cache,
            connect or self.connect,
            self.log,
            self.process,
            self.metrics,
        )
        self.reconcile_every = every

    def reconcile_pass(self) -> list[str]:
        """One report now (``reconcile_periodically`` first); the kinds of new drift."""
        if self.drift is None:
            raise RuntimeError("reconcile_periodically() was not called")
        return self.drift.report_once()

    # -- the service ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop`` is set."""
        self.log.info(
            "watching",
            extra=fields(
                nodes=",".join(self._shared.targets),
                sources=",".join(self.sources),
                follow=self.follow,
                process=self.process,
            ),
        )
        if self.drift is not None and self.reconcile_every > 0:
            loop = functools.partial(self.drift.loop, every=self.reconcile_every)
            self._start(threading.Thread(target=loop, args=(stop,), name="reconcile", daemon=True))
        try:
            self._main_loop(stop)
        finally:
            stop.set()
            for node_stop in self._watching.values():
                node_stop.set()
            for event in self._shared.wake.values():
                event.set()
            for thread in self._threads:
                thread.join(timeout=20)
            self.shares.close()
            with contextlib.suppress(StoreUnavailable):
                self.store.forget_heartbeat(self.process)
            self.log.info("stopped", extra=fields(unsaved=len(self._unsaved)))

    def _start(self, thread: threading.Thread) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _balance(self) -> None:
        """Watch the nodes this watcher holds now (all of them, unless several divide them):
        start the threads of a node taken, stop those of a node given back."""
        held = self.shares.balance([node.name for node in self.inventory.nodes])
        for name in [name for name in self._watching if name not in held]:
            self._watching.pop(name).set()
            self._shared.wake[name].set()
            self.log.info("node given back", extra=fields(node=name, process=self.process))
        for node in self.inventory.nodes:
            if node.name in held and node.name not in self._watching:
                self._watching[node.name] = node_stop = threading.Event()
                for thread in self._node_threads(node, node_stop):
                    self._start(thread)
                if not isinstance(self.shares, AllNodes):
                    self.log.info("node taken", extra=fields(node=node.name, process=self.process))

    def _node_threads(self, node: Node, stop: threading.Event) -> list[threading.Thread]:
        """The node's looker, agent asker (when the agent is a source) and lease follower (when
        following), stopped by ``stop``."""
        watch = NodeWatch(
            node,
            self._shared,
            self.sources,
            self.timing,
            self.log,
            self.connect,
            self.connect_agent,
            self.connect_follow,
            self.metrics,
        )
        loops = [watch.look_loop]
        if "agent" in self.sources:
            loops.append(watch.agent_loop)
        if self.follow:
            loops.append(watch.follow_loop)
        return [
            threading.Thread(target=loop, args=(stop,), name=f"watch-{node.name}", daemon=True)
            for loop in loops
        ]

    def _main_loop(self, stop: threading.Event) -> None:
        t = self.timing
        results = self._shared.results
        next_refresh = next_beat = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_refresh:
                self._refresh()
                self._balance()
                next_refresh = now + t.refresh_s
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + t.heartbeat_s
            try:
                found = results.get(timeout=max(0.01, next_refresh - time.monotonic()))
            except queue.Empty:
                found = None
            while found is not None:
                self._unsaved[found.name] = found  # the newest report for a VM wins
                try:
                    found = results.get_nowait()
                except queue.Empty:
                    found = None
            self._flush()

    def _refresh(self) -> None:
        """What changed among the VMs to watch since the last read: nothing is read while no
        VM's row changes (one tiny query), then only the rows that did (schema 0009)."""
        try:
            version = self.store.vms_version()
            changes = None
            if version != self._read_at:
                changes = self.store.watch_changes(self._read_at, WATCHED_STATES)
        except StoreUnavailable as exc:
            self._store_failed(exc)
            return
        self._store_back()
        if changes is None:
            return
        self._read_at = changes.version
        self._shared.apply(changes)

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
        self._shared.confirm(found)
        wait = None
        if found.created_at is not None:
            wait = (change.at - found.created_at).total_seconds()
        self.metrics.address_recorded(found.source, time.time() - found.seen_at, wait)
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
        detail = {**self._shared.summary(), "held": sorted(self._watching)}
        try:
            self.store.heartbeat(self.process, KIND, {**detail, "unsaved": len(self._unsaved)})
        except StoreUnavailable as exc:
            self._store_failed(exc)

    def _store_failed(self, exc: StoreUnavailable) -> None:
        self.metrics.store_up(False)
        if not self._store_down:
            self._store_down = True
            self.log.warning(
                "PostgreSQL unavailable; addresses are kept until it is back",
                extra=fields(error=str(exc), unsaved=len(self._unsaved)),
            )

    def _store_back(self) -> None:
        self.metrics.store_up(True)
        if self._store_down:
            self._store_down = False
            self.log.info("PostgreSQL reachable again", extra=fields(unsaved=len(self._unsaved)))


def _row(found: Found, change: IpChange | None) -> dict[str, Any]:
    """A row of ``Watcher.once``: the address found and whether it changed anything."""
    return {
        "name": found.name,
        "node": found.node,
        "ip": found.ip,
        "previous": change.previous if change else found.ip,
        "source": found.source,
        "changed": change is not None,
    }
