"""Snapshots of a domain's disks: take, revert, delete, list, done by the node's storage
(``vmctl.adapters.storage``: qcow2 internal snapshots, or RBD snapshots)."""

from __future__ import annotations

from vmctl.services.ports import Runner
from vmctl.services.ports.storage import Storage


class SnapshotsMixin:
    runner: Runner
    storage: Storage

    def snapshots(self, name: str) -> dict[str, list[str]]:
        """Each of the VM's disks on the node -> its snapshots' names."""
        return self.storage.snapshots(self.runner, name)

    def snapshot_create(
        self, name: str, data_disk: bool, snapshot: str, running: bool, quiesce: str = "yes"
    ) -> bool:
        """Snapshot ``snapshot`` of every disk, all or none; whether the guest's filesystems
        were frozen for it (Unavailable when the agent did not freeze and ``quiesce`` is
        "yes"; Conflict when a disk has it already)."""
        return self.storage.snapshot_create(
            self.runner, name, data_disk, snapshot, running, quiesce
        )

    def snapshot_revert(self, name: str, data_disk: bool, snapshot: str) -> None:
        """Every disk back to ``snapshot``; the domain must not be running. NotFound (and no
        disk changed) when one of them lacks it."""
        self.storage.snapshot_revert(self.runner, name, data_disk, snapshot)

    def snapshot_delete(self, name: str, data_disk: bool, snapshot: str, running: bool) -> None:
        self.storage.snapshot_delete(self.runner, name, data_disk, snapshot, running)
