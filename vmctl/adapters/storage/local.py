"""VM disks as qcow2 files in a node directory: DIR/NAME/{root.qcow2 (overlay of the base image),
data.qcow2, seed.iso}. Snapshots are qcow2 internal snapshots (of a running VM: one QMP
transaction between fs-freeze and fs-thaw); the command lines are ``vmctl.core.snapshots``'."""

from __future__ import annotations

from collections.abc import Sequence

from vmctl.adapters.storage.checks import check_create, check_revert
from vmctl.core import snapshots as snap
from vmctl.core.domainxml import local_disks
from vmctl.core.errors import RemoteCommandFailed
from vmctl.core.nodecmd import grow_disk_command
from vmctl.core.storage import GuestDisks
from vmctl.services.ports import Runner
from vmctl.services.ports.storage import PoolSpace


class LocalStorage:
    kind: str = "dir"
    shared: str | None = None

    def __init__(self, directory: str) -> None:
        self.local_dir = directory

    def describe(self) -> str:
        return f"dir {self.local_dir}"

    def disks(self, vm: str, data_disk: bool) -> GuestDisks:
        return local_disks(f"{self.local_dir}/{vm}", data_disk)

    def base(self, image_path: str, image_name: str) -> str:
        return image_path

    def node_args(self) -> list[str]:
        return []

    def space(self, runner: Runner) -> PoolSpace | None:
        return None

    def grow(self, runner: Runner, vm: str, data_gb: int) -> None:
        runner.run(grow_disk_command(f"{self.local_dir}/{vm}/data.qcow2", data_gb))

    def _paths(self, vm: str, data_disk: bool) -> list[str]:
        return snap.disk_paths(self.local_dir, vm, data_disk)

    def snapshots(self, runner: Runner, vm: str) -> dict[str, list[str]]:
        """Each qcow2 disk -> its internal snapshots (`qemu-img snapshot -l -U`: works on
        images in use)."""
        paths = self._paths(vm, data_disk=True)
        return snap.parse_list_output(runner.run(snap.list_command(paths)).stdout)

    def snapshot_create(
        self,
        runner: Runner,
        vm: str,
        data_disk: bool,
        snapshot: str,
        running: bool,
        quiesce: str = "yes",
    ) -> bool:
        paths = self._paths(vm, data_disk)
        if running:
            nodes = _block_nodes(runner, vm, paths)
            transaction = snap.create_transaction(nodes, snapshot)
            command = snap.create_running_command(vm, snapshot, paths, transaction, quiesce)
        else:
            command = snap.create_stopped_command(snapshot, paths)
        result = runner.run(command, check=False)
        check_create(runner.node, vm, command, result.exit_status, result.stderr)
        return snap.parse_quiesced(result.stdout) if running else False

    def snapshot_revert(self, runner: Runner, vm: str, data_disk: bool, snapshot: str) -> None:
        command = snap.revert_command(snapshot, self._paths(vm, data_disk))
        result = runner.run(command, check=False)
        check_revert(runner.node, vm, command, result.exit_status, result.stderr)

    def snapshot_delete(
        self, runner: Runner, vm: str, data_disk: bool, snapshot: str, running: bool
    ) -> None:
        held = self.snapshots(runner, vm)
        paths = [p for p in self._paths(vm, data_disk) if snapshot in held.get(p, [])]
        if not paths:
            return
        if not running:
            runner.run(snap.delete_stopped_command(snapshot, paths))
            return
        for path, node in zip(paths, _block_nodes(runner, vm, paths), strict=True):
            command = snap.delete_command(node, snapshot)
            out = runner.run(snap.monitor_command(vm, command)).stdout
            snap.check_qmp(runner.node, f"{path}: {command}", out)


def _block_nodes(runner: Runner, vm: str, paths: Sequence[str]) -> list[str]:
    out = runner.run(snap.monitor_command(vm, snap.QUERY_BLOCK)).stdout
    snap.check_qmp(runner.node, "query-block", out)
    try:
        return snap.block_nodes(out, paths)
    except ValueError as exc:
        raise RemoteCommandFailed(runner.node, "query-block", 0, str(exc)) from exc
