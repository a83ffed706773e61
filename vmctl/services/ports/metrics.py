"""What the watcher tells its metrics (Prometheus in ``vmctl.adapters.metrics``; nothing when
`vmctl watch-ip` serves no metrics). Calls are cheap and never fail."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class WatchMetrics(Protocol):
    def address_recorded(self, source: str, delay_s: float, wait_s: float | None) -> None:
        """An address was recorded: ``delay_s`` from the node showing it to its record,
        ``wait_s`` from the VM's creation (None: unknown)."""

    def node_connected(self, node: str, connected: bool) -> None:
        """The last contact with ``node`` (a look, the lease follower) worked (or not)."""

    def node_reconnected(self, node: str) -> None:
        """A look or the lease follower works again after failing."""

    def node_following(self, node: str, following: bool) -> None:
        """The node's lease file is followed (or not) from now on."""

    def node_passed(self, node: str) -> None:
        """A pass over the node's VMs is done (a look, or nothing to look for)."""

    def drift(self, counts: Mapping[str, int]) -> None:
        """What the last reconcile report found, per kind of drift."""

    def store_up(self, up: bool) -> None:
        """PostgreSQL answers the watcher (or not)."""


class NoMetrics:
    """A watcher without metrics."""

    def address_recorded(self, source: str, delay_s: float, wait_s: float | None) -> None:
        pass

    def node_connected(self, node: str, connected: bool) -> None:
        pass

    def node_reconnected(self, node: str) -> None:
        pass

    def node_following(self, node: str, following: bool) -> None:
        pass

    def node_passed(self, node: str) -> None:
        pass

    def drift(self, counts: Mapping[str, int]) -> None:
        pass

    def store_up(self, up: bool) -> None:
        pass
