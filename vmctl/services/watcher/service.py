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
from vmctl.core.records import IpChange, VmRecord
from vmctl.services.ports import Cache, Connect, NoMetrics, Store, WatchMetrics
from vmctl.services.watcher.discovery import Found, discover, record
from vmctl.services.watcher.drift import DriftWatch
from vmctl.services.watcher.node import NodeWatch
from vmctl.services.watcher.shared import Shared
from vmctl.services.watcher.timing import DEFAULT_TIMING, Timing

if TYPE_CHECKING:
    from vmctl.core.inventory import Inventory

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
    ) -> None:
        self.inventory = inventory
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
        workers = self._workers(stop)
        for worker in workers:
            worker.start()
        try:
            self._main_loop(stop)
        finally:
            stop.set()
            for event in self._shared.wake.values():
                event.set()
            for worker in workers:
                worker.join(timeout=20)
            with contextlib.suppress(StoreUnavailable):
                self.store.forget_heartbeat(self.process)
            self.log.info("stopped", extra=fields(unsaved=len(self._unsaved)))

    def _workers(self, stop: threading.Event) -> list[threading.Thread]:
        """Per node: the looker, the agent asker (when the agent is a source) and the lease
        follower (when following)."""
        workers = []
        for node in self.inventory.nodes:
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
            workers += [
                threading.Thread(target=loop, args=(stop,), name=f"watch-{node.name}", daemon=True)
                for loop in loops
            ]
        if self.drift is not None and self.reconcile_every > 0:
            loop = functools.partial(self.drift.loop, every=self.reconcile_every)
            workers.append(
                threading.Thread(target=loop, args=(stop,), name="reconcile", daemon=True)
            )
        return workers

    def _main_loop(self, stop: threading.Event) -> None:
        t = self.timing
        results = self._shared.results
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
        """The VMs to watch, read again only when a VM's row changed since the last read: with
        nothing changing, a pass costs one tiny query, whatever the number of VMs."""
        try:
            version = self.store.vms_version()  # first: a list read after it is at least as new
            vms = None if version == self._read_at else self.store.list()
        except StoreUnavailable as exc:
            self._store_failed(exc)
            return
        self._store_back()
        if vms is None:
            return
        self._read_at = version
        targets: dict[str, dict[str, VmRecord]] = {name: {} for name in self._shared.targets}
        for vm in vms:
            if vm.state in WATCHED_STATES and vm.node in targets:
                targets[vm.node][vm.name] = vm
        self._shared.retarget(targets)

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
        detail = self._shared.summary()
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
