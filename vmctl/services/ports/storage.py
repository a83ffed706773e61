"""The storage port: where one node keeps VM disks (``vmctl.adapters.storage``: qcow2 files in a
directory, or images in a Ceph RBD pool). Services never learn which; they ask this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from vmctl.core.storage import GuestDisks
    from vmctl.services.ports.node import Runner


@dataclass(frozen=True)
class PoolSpace:
    """Room in storage that several nodes share (an RBD pool), as its cluster reports it."""

    key: str  # names the shared storage (the same on every node that uses it)
    label: str  # for people: "rbd pool vms"
    free_bytes: int  # what the pool can still store
    stored_bytes: int  # what it holds now
    ratio: float  # how far beyond free space disks may be provisioned (thin clones)

    @property
    def capacity_gb(self) -> int:
        """GiB of disks the pool may hold: what it holds and can still hold, times the ratio."""
        return int((self.free_bytes + self.stored_bytes) * self.ratio / 2**30)


class Storage(Protocol):
    """One node's VM disks: described to libvirt, and made, grown, snapshotted, surveyed and
    removed by commands the node runs (through the Runner it is given)."""

    kind: str  # for people: "dir" or "rbd"
    local_dir: str  # the node's directory of each VM's local files: local_dir/NAME
    shared: str | None  # nodes whose storage has the same key reach the same disks; None: none

    def describe(self) -> str:
        """For people: "dir /var/lib/libvirt/images/vmctl", "rbd pool vms"."""
        ...

    def disks(self, vm: str, data_disk: bool) -> GuestDisks:
        """The VM's disks, as its domain XML names them."""
        ...

    def base(self, image_path: str, image_name: str) -> str:
        """What create-vm.sh clones the root disk from (--base)."""
        ...

    def node_args(self) -> list[str]:
        """The storage options of create-vm.sh, delete-vm.sh and survey.sh."""
        ...

    def space(self, runner: Runner) -> PoolSpace | None:
        """Room in shared storage, asked of the cluster; None for node-local storage (counted
        against the node's capacity in the inventory)."""
        ...

    def grow(self, runner: Runner, vm: str, data_gb: int) -> None:
        """Grow the data disk of a stopped VM (never shrinks: refused)."""
        ...

    def snapshots(self, runner: Runner, vm: str) -> dict[str, list[str]]:
        """Each of the VM's disks -> its snapshots' names."""
        ...

    def snapshot_create(
        self,
        runner: Runner,
        vm: str,
        data_disk: bool,
        snapshot: str,
        running: bool,
        quiesce: str = "yes",
    ) -> bool:
        """Snapshot every disk, all or none (a running VM between fs-freeze and fs-thaw);
        whether it was frozen. Conflict: it exists; Unavailable: no freeze and quiesce "yes"."""
        ...

    def snapshot_revert(self, runner: Runner, vm: str, data_disk: bool, snapshot: str) -> None:
        """Disks of a VM that is not running back to ``snapshot`` (NotFound, none changed,
        when one lacks it)."""
        ...

    def snapshot_delete(
        self, runner: Runner, vm: str, data_disk: bool, snapshot: str, running: bool
    ) -> None: ...
