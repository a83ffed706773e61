"""Placing many VMs at once: exactly what `placement.place` gives one after another (each VM
seeing the room the earlier ones took, and their anti-affinity groups), without looking at every
node for every VM.

For each kind of request (what it needs, spread or pack) a heap orders the nodes as
`placement._choose` does: by the room left after placing it, then by name. A node whose usage
changes gets a new entry in every heap (the old one is dropped when it reaches the top); a node
that no longer fits a kind of request is dropped from that heap for good (within a batch usage only
grows); nodes kept off by anti-affinity are set aside and put back. When no node is left the
request is given to `placement.place`, which finds the same answer and words the error.
10,000 VMs onto 1,000 nodes: ~0.2 s instead of ~40 s (bench/placement.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, replace

from vmctl.core.errors import VmctlError
from vmctl.core.placement import NodeLoad, Request, Resources, free, place, room_after

Kind = tuple[Resources, str]  # what a request needs, and its policy
Entry = tuple[float, str, int]  # (sign * room after, node name, the node's version)


@dataclass(frozen=True)
class Placement:
    """Where one request went (``node``), or why it could not be placed (``error``)."""

    name: str
    node: str | None = None
    error: VmctlError | None = None


class _Batch:
    def __init__(self, nodes: Sequence[NodeLoad]) -> None:
        self.nodes = list(nodes)
        self.index = {node.name: i for i, node in enumerate(self.nodes)}
        self.version = [0] * len(self.nodes)
        self.heaps: dict[Kind, list[Entry]] = {}

    def _entry(self, kind: Kind, i: int) -> Entry:
        need, policy = kind
        sign = -1.0 if policy == "spread" else 1.0
        node = self.nodes[i]
        return (sign * room_after(node, need), node.name, self.version[i])

    def _heap(self, kind: Kind) -> list[Entry]:
        heap = self.heaps.get(kind)
        if heap is None:
            heap = [
                self._entry(kind, i)
                for i, node in enumerate(self.nodes)
                if node.enabled and kind[0].fits_in(free(node))
            ]
            heapq.heapify(heap)
            self.heaps[kind] = heap
        return heap

    def choose(self, request: Request) -> str | None:
        """The node ``place`` would pick, or None when it would raise."""
        kind = (request.need, request.policy)
        heap = self._heap(kind)
        aside: list[Entry] = []
        found = None
        while heap:
            entry = heap[0]
            i = self.index[entry[1]]
            if entry[2] != self.version[i] or not request.need.fits_in(free(self.nodes[i])):
                heapq.heappop(heap)  # stale (a newer entry is in), or full for this kind
                continue
            if request.group is not None and request.group in self.nodes[i].groups:
                aside.append(heapq.heappop(heap))
                continue
            found = entry[1]
            break
        for entry in aside:
            heapq.heappush(heap, entry)
        return found

    def book(self, request: Request, name: str) -> None:
        i = self.index[name]
        node, need = self.nodes[i], request.need
        used = Resources(
            node.used.cpu + need.cpu,
            node.used.ram_mb + need.ram_mb,
            node.used.disk_gb + need.disk_gb,
        )
        groups = node.groups | {request.group} if request.group is not None else node.groups
        self.nodes[i] = replace(node, used=used, groups=groups)
        self.version[i] += 1
        for kind, heap in self.heaps.items():
            if kind[0].fits_in(free(self.nodes[i])):
                heapq.heappush(heap, self._entry(kind, i))


def place_many(requests: Sequence[Request], nodes: Sequence[NodeLoad]) -> list[Placement]:
    """Each request placed in turn, as `place` would one after another; a request that cannot
    be placed gets the error `place` raises and books nothing, and the next ones go on."""
    batch = _Batch(nodes)
    placed = []
    for request in requests:
        try:
            name = batch.choose(request) if _plain(request) else None
            if name is None:  # pinned, invalid, or no room: `place` decides (and words the error)
                name = place(request, batch.nodes)
        except VmctlError as exc:
            placed.append(Placement(request.name, error=exc))
            continue
        batch.book(request, name)
        placed.append(Placement(request.name, node=name))
    return placed


def _plain(request: Request) -> bool:
    """Not pinned, a known policy and no negative amount: what the heaps answer."""
    need = request.need
    return (
        request.node is None
        and request.policy in ("spread", "pack")
        and min(need.cpu, need.ram_mb, need.disk_gb) >= 0
    )
