"""Internal snapshots of a domain's qcow2 disks: take, revert, delete, list.

The command lines and the parsers are the pure functions of ``vmctl.core.snapshots``.
"""

from __future__ import annotations

from collections.abc import Sequence

from vmctl.core import snapshots as snap
from vmctl.core.errors import Conflict, NotFound, RemoteCommandFailed, Unavailable
from vmctl.core.nodecmd import describe
from vmctl.services.ports import Runner


class SnapshotsMixin:
    runner: Runner

    def snapshots(self, name: str, storage_dir: str) -> dict[str, list[str]]:
        """Each of the VM's qcow2 disks on the node -> its internal snapshots' names (read with
        `qemu-img snapshot -l -U`, which works on images in use)."""
        paths = snap.disk_paths(storage_dir, name, data_disk=True)
        return snap.parse_list_output(self.runner.run(snap.list_command(paths)).stdout)

    def snapshot_create(
        self, name: str, paths: Sequence[str], snapshot: str, running: bool, quiesce: str = "yes"
    ) -> bool:
        """Take internal snapshot ``snapshot`` of every disk in ``paths``, all or none; whether
        the guest's filesystems were frozen for it. ``running``: through QMP, between fs-freeze
        and fs-thaw (``quiesce``: "yes", "try" or "no"); else with qemu-img. Unavailable when
        the guest agent did not freeze and ``quiesce`` is "yes"."""
        if running:
            nodes = self._block_nodes(name, paths)
            transaction = snap.create_transaction(nodes, snapshot)
            command = snap.create_running_command(name, snapshot, paths, transaction, quiesce)
        else:
            command = snap.create_stopped_command(snapshot, paths)
        result = self.runner.run(command, check=False)
        if result.exit_status == snap.EXISTS:
            raise Conflict(
                f"{name}: {_line(result.stderr, 'already')} on node {self.runner.node} "
                "(not recorded in PostgreSQL: see `vmctl reconcile`)"
            )
        if result.exit_status == snap.NO_FREEZE:
            why = _line(result.stderr, "did not freeze")
            raise Unavailable(
                f"{name}: {why}; is qemu-guest-agent running in the guest? (--no-quiesce "
                "takes the snapshot unfrozen then)"
            )
        if result.exit_status != 0:
            raise RemoteCommandFailed(
                self.runner.node, describe(command), result.exit_status, result.stderr
            )
        return snap.parse_quiesced(result.stdout) if running else False

    def snapshot_revert(self, name: str, paths: Sequence[str], snapshot: str) -> None:
        """Put every disk in ``paths`` back to ``snapshot``; the domain must not be running.
        NotFound (and no disk changed) when one of them lacks it."""
        command = snap.revert_command(snapshot, paths)
        result = self.runner.run(command, check=False)
        if result.exit_status == 3:
            raise NotFound(f"{name}: {result.stderr.strip()}")
        if result.exit_status != 0:
            raise RemoteCommandFailed(
                self.runner.node, describe(command), result.exit_status, result.stderr
            )

    def snapshot_delete(
        self, name: str, paths: Sequence[str], snapshot: str, running: bool
    ) -> None:
        """Delete ``snapshot`` from every disk in ``paths`` (through QMP when ``running``)."""
        if not running:
            self.runner.run(snap.delete_stopped_command(snapshot, paths))
            return
        for path, node in zip(paths, self._block_nodes(name, paths), strict=True):
            command = snap.delete_command(node, snapshot)
            out = self.runner.run(snap.monitor_command(name, command)).stdout
            snap.check_qmp(self.runner.node, f"{path}: {command}", out)

    def _block_nodes(self, name: str, paths: Sequence[str]) -> list[str]:
        out = self.runner.run(snap.monitor_command(name, snap.QUERY_BLOCK)).stdout
        snap.check_qmp(self.runner.node, "query-block", out)
        try:
            return snap.block_nodes(out, paths)
        except ValueError as exc:
            raise RemoteCommandFailed(self.runner.node, "query-block", 0, str(exc)) from exc


def _line(stderr: str, marker: str) -> str:
    """The script's line about ``marker`` (without its "snapshot-create: " prefix)."""
    line = next((ln for ln in stderr.splitlines() if marker in ln), stderr.strip())
    return line.removeprefix("snapshot-create: ")
