"""What vmctl records about VMs: plain data shared by the services and the store."""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from datetime import datetime

STATES = ("creating", "running", "stopped", "deleting", "error")
IP_STATES = ("expected", "confirmed")
# libvirt's domain states in which what vmctl records is definite: running or stopped
RECORDED_STATES = {"running": "running", "shut off": "stopped"}
RESULTS = ("ok", "failed", "started", "step")  # step: one step of a move


@dataclass(frozen=True)
class NewVm:
    """What ``Store.claim`` needs to reserve room for a VM."""

    name: str
    ram_mb: int
    cpu: int
    disk_gb: int  # the data disk
    root_gb: int
    image: str
    mac: str
    group_name: str | None = None
    project: str | None = None
    phone_home_hash: str | None = None  # SHA-256 of the VM's one-time phone-home secret


@dataclass(frozen=True)
class NodeUsage:
    """What the VMs recorded on one node take (every state; deleted VMs have no row)."""

    node: str
    cpu: int
    ram_mb: int
    disk_gb: int  # data disks + root disks
    groups: frozenset[str] = frozenset()
    vms: int = 0


@dataclass(frozen=True)
class VmRecord:
    id: int
    name: str
    node: str
    state: str
    ram_mb: int
    cpu: int
    disk_gb: int
    root_gb: int
    image: str
    mac: str
    host_key: str | None
    ip: str | None
    ip_state: str | None
    group_name: str | None
    project: str | None
    created_at: datetime  # timezone-aware, UTC
    updated_at: datetime  # timezone-aware, UTC
    ip_pool: str | None = None  # managed networks: the address space reserved_ip belongs to
    reserved_ip: str | None = None  # the address reserved for the VM's MAC in the DHCP
    phone_home_hash: str | None = None
    move_node: str | None = None  # while `vmctl move` works: where the VM goes
    move_ip_pool: str | None = None  # ... and the address it gets there
    move_ip: str | None = None


@dataclass(frozen=True, slots=True)
class WatchTarget:
    """What the watcher keeps of a VM it watches: how to find it (its MAC, lower case) and what
    is recorded of its address. A few strings per VM, so 100,000 VMs fit in a few tens of MB."""

    name: str
    node: str
    mac: str
    ip: str | None
    ip_state: str | None
    created_at: datetime  # timezone-aware, UTC

    @property
    def waiting(self) -> bool:
        """No address confirmed yet: the watcher looks for this VM at the fast pace."""
        return self.ip_state != "confirmed"

    @classmethod
    def of(cls, vm: VmRecord) -> WatchTarget:
        return cls(vm.name, vm.node, vm.mac.lower(), vm.ip, vm.ip_state, vm.created_at)


@dataclass(frozen=True)
class WatchChanges:
    """What changed among the watched VMs since the version a watcher last read at."""

    version: int  # read at this version: ask for changes since it next time
    whole: bool  # ``vms`` are all the watched VMs (read from scratch): forget every other one
    vms: list[WatchTarget]  # watched VMs, new or changed (every one when ``whole``)
    gone: list[str]  # names no longer watched: deleted, or in a state not watched


@dataclass(frozen=True)
class Mark:
    """vmctl's ownership mark on what it makes on a node: the domain's libvirt metadata and the
    VM directory's ``.vmctl`` file. Only what carries this installation's mark is vmctl's to
    change or remove."""

    installation: str  # the id of the vmctl installation (its database) that made it
    record_id: int  # the VM's row id in that database
    vm: str
    manager: str  # the host that made it (for people; never decides anything)


@dataclass(frozen=True)
class IpChange:
    """An address the watcher recorded: what it was before and how it was learned."""

    name: str
    node: str
    ip: str
    previous: str | None
    previous_state: str | None
    source: str
    at: datetime


def default_actor() -> str:
    """Who is acting, for the event log: ``user@host``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class OperationFigures:
    """Creates or deletes of one result as the event log has them: how many, and for those
    that recorded their duration, how many took at most each bound of ``bounds_s``."""

    action: str  # create, delete
    result: str  # ok, failed
    count: int
    timed: int  # events with a duration
    seconds: float  # their durations' sum
    bounds_s: tuple[float, ...]
    at_most: tuple[int, ...]  # per bound: timed events that took at most that long


@dataclass(frozen=True)
class CloudFigures:
    """The cloud as PostgreSQL records it, for the cloud's metrics."""

    vms: dict[tuple[str, str], int]  # (node, state): VMs
    waiting: dict[str, int]  # node: creating or running VMs without a confirmed address
    operations: list[OperationFigures]
    rollbacks: dict[str, int]  # clean (nothing left), incomplete (cleanup problems)
