"""The port of the nodes' division between several watchers (``vmctl watch-ip --share``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class NodeShares(Protocol):
    """Which of the nodes this watcher watches, when several watchers divide them."""

    def balance(self, nodes: Sequence[str]) -> frozenset[str]:
        """One round, about once a second: keep, take or give back nodes so that each live
        watcher holds its fair share and no node is held by two; the nodes held now (none
        while the division cannot be reached: a node is never watched twice)."""
        ...

    def close(self) -> None:
        """Give every node back (the others take them at once)."""
        ...


class AllNodes:
    """One watcher alone: it watches every node."""

    def balance(self, nodes: Sequence[str]) -> frozenset[str]:
        return frozenset(nodes)

    def close(self) -> None:
        pass
