"""The cloud's metrics (`vmctl serve`'s /metrics/cloud): what PostgreSQL records and what the
inventory allows, the same on every replica — so Prometheus scrapes it once (through HAProxy),
never per replica. Turned into Prometheus' text by ``vmctl.adapters.metrics.cloud``."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmctl.core import placement
from vmctl.core.records import CloudFigures
from vmctl.services.ports.storage import PoolSpace

if TYPE_CHECKING:
    from vmctl.services.vms import VmService

# Create and delete durations: seconds (a create is a few seconds; a delete waits for a shutdown).
DURATION_BOUNDS_S = (0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300)
# Shared storage's room is asked of its cluster (`ceph df` over SSH, ~0.7 s: the scrape that
# asks takes that long) at most this often.
POOL_SPACE_TTL_S = 60.0
GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class NodeFigures:
    """One node: what placement may book (capacity * overcommit) and what is booked."""

    node: str
    capacity_cpus: int
    allocated_cpus: int
    capacity_memory_bytes: int
    allocated_memory_bytes: int
    capacity_disk_bytes: int | None  # None: its disks are in shared storage (see pools)
    allocated_disk_bytes: int | None


@dataclass(frozen=True)
class PoolFigures:
    pool: str  # the storage's key, e.g. rbd:CLUSTER/vms
    capacity_disk_bytes: int | None  # None: its cluster did not answer
    allocated_disk_bytes: int


@dataclass(frozen=True)
class CloudReport:
    records: CloudFigures
    nodes: list[NodeFigures]
    pools: list[PoolFigures]


class _SpaceCache:
    """Shared storage's room, asked of the cluster (an SSH command) at most every TTL s."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at = 0.0
        self.spaces: dict[str, PoolSpace | str] = {}

    def get(self, svc: VmService) -> dict[str, PoolSpace | str]:
        with self.lock:
            if time.monotonic() - self.at >= POOL_SPACE_TTL_S:
                self.spaces = svc.pool_spaces()
                self.at = time.monotonic()
            return self.spaces


_spaces = _SpaceCache()


def cloud_report(svc: VmService) -> CloudReport:
    """The cloud now: records from PostgreSQL, capacity from the inventory (and the pools)."""
    records = svc.store.cloud_figures(DURATION_BOUNDS_S)
    usages = svc.store.usage()
    spaces = _spaces.get(svc) if any(svc.storage(n).shared for n in svc.inventory.nodes) else {}
    nodes, pools = [], {}
    for load in svc.loads(usages, spaces):
        total = placement.total(load)
        node = svc.inventory.node(load.name)
        key = svc.storage(node).shared
        if key is not None:
            space = spaces.get(key)
            pools[key] = PoolFigures(
                key,
                total.disk_gb * GIB if isinstance(space, PoolSpace) else None,
                load.used.disk_gb * GIB,
            )
        nodes.append(
            NodeFigures(
                node=load.name,
                capacity_cpus=total.cpu,
                allocated_cpus=load.used.cpu,
                capacity_memory_bytes=total.ram_mb * MIB,
                allocated_memory_bytes=load.used.ram_mb * MIB,
                capacity_disk_bytes=None if key else total.disk_gb * GIB,
                allocated_disk_bytes=None if key else load.used.disk_gb * GIB,
            )
        )
    return CloudReport(records, nodes, list(pools.values()))
