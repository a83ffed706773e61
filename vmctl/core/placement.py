"""Choose the node a new VM goes to: a pure function of the request and the nodes' load.

`spread` puts the VM where the most room is left afterwards, `pack` where the least is left that
still fits. Room is measured as the smallest, over vCPU, RAM and disk, of the fraction of the
node's bookable total (capacity * overcommit ratio) still free after placement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from vmctl.core import validation
from vmctl.core.errors import CapacityError, InvalidInput, NotFound

Policy = Literal["spread", "pack"]


@dataclass(frozen=True)
class Resources:
    """An amount of vCPUs, RAM (MiB) and disk (GiB)."""

    cpu: int
    ram_mb: int
    disk_gb: int

    def fits_in(self, other: Resources) -> bool:
        """True when every amount here is at most the one in `other`."""
        return (
            self.cpu <= other.cpu and self.ram_mb <= other.ram_mb and self.disk_gb <= other.disk_gb
        )

    def describe(self) -> str:
        return f"{self.cpu} vCPU, {self.ram_mb} MiB RAM, {self.disk_gb} GiB disk"


@dataclass(frozen=True)
class NodeLoad:
    """A node as placement sees it: what it has, how far it may be overbooked, what is booked."""

    name: str
    capacity: Resources
    overcommit_cpu: float
    overcommit_ram: float
    overcommit_disk: float
    used: Resources
    groups: frozenset[str] = frozenset()  # the groups that have a VM on this node
    enabled: bool = True  # a disabled (drained) node takes no new VMs
    disk_in: str | None = None  # where its VM disks are counted, when not on the node itself


@dataclass(frozen=True)
class Request:
    """A VM to place: what it needs, optionally a pinned node and an anti-affinity group."""

    name: str
    need: Resources
    node: str | None = None
    group: str | None = None
    policy: Policy = "spread"


def total(node: NodeLoad) -> Resources:
    """What may be booked on `node` in all: capacity * overcommit ratio, rounded down."""
    cap = node.capacity
    return Resources(
        math.floor(cap.cpu * node.overcommit_cpu),
        math.floor(cap.ram_mb * node.overcommit_ram),
        math.floor(cap.disk_gb * node.overcommit_disk),
    )


def free(node: NodeLoad) -> Resources:
    """What is still free on `node`: total - used, never negative."""
    all_, used = total(node), node.used
    return Resources(
        max(0, all_.cpu - used.cpu),
        max(0, all_.ram_mb - used.ram_mb),
        max(0, all_.disk_gb - used.disk_gb),
    )


def room_after(node: NodeLoad, need: Resources) -> float:
    """The smallest fraction of the node's total that stays free once `need` is placed."""
    fractions = [
        (left - asked) / whole if whole > 0 else 0.0
        for left, asked, whole in zip(
            _amounts(free(node)), _amounts(need), _amounts(total(node)), strict=True
        )
    ]
    return min(fractions)


def place(request: Request, nodes: Sequence[NodeLoad]) -> str:
    """The name of the node `request` goes to; NotFound or CapacityError if there is none."""
    _check(request)
    if request.node is not None:
        return _pinned(request, nodes)
    enabled = [node for node in nodes if node.enabled]
    if not enabled:
        raise CapacityError(f"no enabled node to place {request.name} on ({len(nodes)} disabled)")
    fitting = [node for node in enabled if request.need.fits_in(free(node))]
    allowed = [node for node in fitting if not _taken(node, request.group)]
    if allowed:
        return _choose(allowed, request).name
    if fitting:
        names = ", ".join(sorted(node.name for node in fitting))
        raise CapacityError(
            f"group {request.group} already has a VM on every node with room for "
            f"{request.need.describe()} ({names}): anti-affinity keeps {request.name} off them"
        )
    best = _largest_slot(enabled, request.need)
    raise CapacityError(
        f"no node has room for {request.need.describe()}; the largest free slot is "
        f"{best.name}: {free(best).describe()}"
    )


def _check(request: Request) -> None:
    validation.policy(request.policy)
    for field, amount in zip(("cpu", "ram_mb", "disk_gb"), _amounts(request.need), strict=True):
        if amount < 0:
            raise InvalidInput(field, f"must not be negative (got {amount})")


def _pinned(request: Request, nodes: Sequence[NodeLoad]) -> str:
    by_name = {node.name: node for node in nodes}
    node = by_name.get(request.node or "")
    if node is None:
        known = ", ".join(sorted(by_name)) or "none"
        raise NotFound(f"unknown node {request.node!r} (known: {known})")
    if not node.enabled:
        raise CapacityError(f"node {node.name} is disabled: it takes no new VMs")
    if _taken(node, request.group):
        raise CapacityError(
            f"node {node.name} already has a VM of group {request.group}: "
            f"anti-affinity keeps {request.name} off it"
        )
    short = _shortfall(free(node), request.need, node.disk_in)
    if short:
        raise CapacityError(f"node {node.name} has {'; '.join(short)}")
    return node.name


def _shortfall(left: Resources, need: Resources, disk_in: str | None = None) -> list[str]:
    """What is short, e.g. `1536 MiB RAM free, 2048 MiB asked`."""
    short = []
    if need.cpu > left.cpu:
        short.append(f"{left.cpu} vCPU free, {need.cpu} asked")
    if need.ram_mb > left.ram_mb:
        short.append(f"{left.ram_mb} MiB RAM free, {need.ram_mb} MiB asked")
    if need.disk_gb > left.disk_gb:
        where = f" in {disk_in}" if disk_in else ""
        short.append(f"{left.disk_gb} GiB disk free{where}, {need.disk_gb} GiB asked")
    return short


def _taken(node: NodeLoad, group: str | None) -> bool:
    return group is not None and group in node.groups


def _choose(candidates: list[NodeLoad], request: Request) -> NodeLoad:
    sign = -1.0 if request.policy == "spread" else 1.0
    return min(candidates, key=lambda node: (sign * room_after(node, request.need), node.name))


def _largest_slot(nodes: list[NodeLoad], need: Resources) -> NodeLoad:
    """The node that comes closest to fitting `need`: the largest smallest free/asked ratio."""

    def closeness(node: NodeLoad) -> float:
        ratios = [
            left / asked
            for left, asked in zip(_amounts(free(node)), _amounts(need), strict=True)
            if asked > 0
        ]
        return min(ratios, default=math.inf)

    return min(nodes, key=lambda node: (-closeness(node), node.name))


def _amounts(resources: Resources) -> tuple[int, int, int]:
    return resources.cpu, resources.ram_mb, resources.disk_gb


def check_grow(node: NodeLoad, name: str, extra: Resources) -> None:
    """CapacityError unless ``node`` has room for ``extra``, what a resize of VM ``name`` adds
    (the message names the free room: the most the VM can grow by there)."""
    left = free(node)
    if not extra.fits_in(left):
        short = "; ".join(_shortfall(left, extra, node.disk_in))
        raise CapacityError(
            f"node {node.name} has no room to grow {name}: {short} (free there: {left.describe()})"
        )
