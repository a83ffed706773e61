"""One node's threads: the looker (leases and ARP table, one command for all the node's VMs),
the guest agent asker, and the lease follower. Each has its own connection, so a slow one holds
up nothing else, and none of them dies of an error: a node that fails is retried with backoff."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from vmctl.core.addressing import Lease
from vmctl.core.errors import RemoteCommandFailed, VmctlError
from vmctl.core.logfields import fields
from vmctl.services.ports import Connect, Hypervisor, WatchMetrics
from vmctl.services.watcher.backoff import Backoff
from vmctl.services.watcher.discovery import Found, discover
from vmctl.services.watcher.shared import Shared
from vmctl.services.watcher.timing import Timing

if TYPE_CHECKING:
    from vmctl.core.inventory import Node

# One look at a node: what it found, and how long to wait before the next one.
Look = Callable[[Hypervisor], tuple[list[Found], float]]


class NodeWatch:
    """The threads watching one node, each run as ``target(stop)``."""

    def __init__(
        self,
        node: Node,
        shared: Shared,
        sources: Sequence[str],
        timing: Timing,
        log: logging.Logger,
        connect: Connect,
        connect_agent: Connect,
        connect_follow: Connect,
        metrics: WatchMetrics,
    ) -> None:
        self.node = node
        self.shared = shared
        self.sources = tuple(sources)
        self.timing = timing
        self.log = log
        self.connect = connect
        self.connect_agent = connect_agent
        self.connect_follow = connect_follow
        self.metrics = metrics
        self._batch = tuple(source for source in self.sources if source != "agent")

    # -- looks ----------------------------------------------------------------------------------

    def look_loop(self, stop: threading.Event) -> None:
        """Leases and ARP table: one command per look, all the node's VMs at once."""
        self._loop(stop, "look", self.connect, self._look, self.shared.wake[self.node.name])

    def agent_loop(self, stop: threading.Event) -> None:
        """The guest agent, per VM, for VMs still without an address after ``agent_after_s``.
        Its own thread and connection: an agent that does not answer (5 s) delays nothing else."""
        self._loop(stop, "agent", self.connect_agent, self._ask_agents, threading.Event())

    def _look(self, hv: Hypervisor) -> tuple[list[Found], float]:
        node = self.node.name
        found = []
        if self._batch:
            seen = hv.observe(self.node.network.name)
            found = self.shared.match(node, seen, self._batch)
        if not self.shared.waiting(node):
            return found, self.timing.idle_s
        following = self.shared.is_followed(node)
        return found, self.timing.following_s if following else self.timing.fast_s

    def _ask_agents(self, hv: Hypervisor) -> tuple[list[Found], float]:
        t = self.timing
        now = datetime.now(UTC)
        late = [
            vm
            for vm in self.shared.waiting(self.node.name)
            if (now - vm.created_at).total_seconds() >= t.agent_after_s
        ]
        found = discover(hv, self.node.network.name, late, ("agent",)) if late else []
        return found, t.agent_every_s

    def _loop(
        self, stop: threading.Event, kind: str, connect: Connect, look: Look, wake: threading.Event
    ) -> None:
        """Look at the node until ``stop``; a node that fails is retried with backoff, and
        this thread never dies of an error."""
        backoff = Backoff()
        hv: Hypervisor | None = None
        while not stop.is_set():
            pause = self.timing.idle_s
            if self.shared.watched(self.node.name):
                try:
                    if hv is None:
                        hv = connect(self.node)
                    found, pause = look(hv)
                except Exception as exc:  # a watching thread must never die
                    self._look_failed(backoff, kind, exc)
                    if hv is not None:
                        hv.close()  # the next look opens a new connection
                    backoff.wait(stop)
                    continue
                self._look_worked(backoff, kind)
                self.shared.report(found)
            if kind == "look":
                self.metrics.node_passed(self.node.name)  # looked, or nothing to look for
            wake.wait(pause)
            wake.clear()
        if hv is not None:
            hv.close()  # stopped (or the node given back to another watcher): no idle connection

    def _look_failed(self, backoff: Backoff, kind: str, exc: Exception) -> None:
        if backoff.failed():
            unexpected = not isinstance(exc, VmctlError)
            self.log.log(
                logging.ERROR if unexpected else logging.WARNING,
                "node unreachable; retrying with backoff",
                extra=fields(node=self.node.name, by=kind, error=str(exc)),
                exc_info=exc if unexpected else None,
            )
        if kind == "look":
            self.shared.node_state[self.node.name] = "unreachable"
            self.metrics.node_connected(self.node.name, False)

    def _look_worked(self, backoff: Backoff, kind: str) -> None:
        failures = backoff.recovered()
        if failures:
            self.metrics.node_reconnected(self.node.name)
            self.log.info(
                "node reachable again",
                extra=fields(node=self.node.name, by=kind, attempts=failures),
            )
        if kind == "look":
            self.shared.node_state[self.node.name] = "connected"
            self.metrics.node_connected(self.node.name, True)

    # -- the lease follower ---------------------------------------------------------------------

    def follow_loop(self, stop: threading.Event) -> None:
        """Leases the moment the node's DHCP server writes them (scripts/watch-leases.sh follows
        libvirt's lease file): no waiting for the next look. While the follower is down (or the
        node's network has no lease file) the looks go on at the fast pace."""
        node = self.node.name
        backoff = Backoff()

        def on_leases(leases: list[Lease]) -> None:
            if backoff.recovered():
                self.metrics.node_reconnected(node)
                self.log.info("following leases again", extra=fields(node=node))
            if not self.shared.is_followed(node):
                self.metrics.node_following(node, True)
                self.metrics.node_connected(node, True)
            self.shared.report(self.shared.follow(node, leases))

        while not stop.is_set():
            hv = self.connect_follow(self.node)
            try:
                error = self._follow(hv, on_leases, stop)
            finally:
                self.shared.unfollow(node)
                self.metrics.node_following(node, False)
            if error is None or stop.is_set():
                hv.close()  # nothing to follow, or stopped: no idle connection is kept
                return
            self.metrics.node_connected(node, False)
            if backoff.failed():
                self.log.warning(
                    f"not following leases; looking at the node every {self.timing.fast_s} s"
                    " meanwhile",
                    extra=fields(node=node, error=error),
                )
            hv.close()
            backoff.wait(stop)

    def _follow(
        self, hv: Hypervisor, on_leases: Callable[[list[Lease]], None], stop: threading.Event
    ) -> str | None:
        """Follow the lease file until the stream ends: why it ended, or None when there is
        nothing to follow (no libvirt network) and the looks are left to find the VMs."""
        try:
            hv.follow_leases(self.node.network.name, on_leases, stop)
        except RemoteCommandFailed as exc:
            if exc.remote_exit_status == 3:  # no libvirt network: nothing to follow
                self.log.info(
                    "no lease file to follow; looking at the node instead",
                    extra=fields(node=self.node.name, error=exc.stderr.strip()),
                )
                return None
            return exc.stderr.strip() or str(exc)
        except Exception as exc:  # a watching thread must never die
            return str(exc)
        return "the follower ended"
