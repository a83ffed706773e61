"""VM disks as images in a Ceph RBD pool that nodes share: vmctl.NAME.root (a clone of
IMAGE@base), vmctl.NAME.data, vmctl.NAME.seed. libvirt reaches them through librbd with cephx
(the key in a libvirt secret on the node); the node's `rbd` command reads its keyring. Snapshots
are RBD snapshots (scripts/rbd.sh)."""

from __future__ import annotations

import json

from vmctl.adapters.storage.checks import check_create, check_revert
from vmctl.core.errors import RemoteCommandFailed
from vmctl.core.inventory import Storage as StorageConfig
from vmctl.core.nodecmd import describe, script_command
from vmctl.core.storage import GuestDisks, RbdDisk, rbd_image
from vmctl.services.ports import Runner
from vmctl.services.ports.storage import PoolSpace


class RbdStorage:
    kind: str = "rbd"

    def __init__(self, config: StorageConfig) -> None:
        assert config.pool and config.monitors and config.user and config.secret_uuid
        self.pool = config.pool
        self.monitors = tuple(config.monitors)
        self.user = config.user
        self.secret_uuid = config.secret_uuid
        self.keyring = config.keyring_path
        self.ratio = config.ratio
        self.local_dir = config.directory
        self.shared: str | None = config.pool_key

    def describe(self) -> str:
        return f"rbd pool {self.pool}"

    def _disk(self, vm: str, kind: str) -> RbdDisk:
        return RbdDisk(self.pool, rbd_image(vm, kind), self.monitors, self.user, self.secret_uuid)

    def disks(self, vm: str, data_disk: bool) -> GuestDisks:
        return GuestDisks(
            root=self._disk(vm, "root"),
            data=self._disk(vm, "data") if data_disk else None,
            seed=self._disk(vm, "seed"),
        )

    def base(self, image_path: str, image_name: str) -> str:
        return image_name

    def node_args(self) -> list[str]:
        return [
            "--rbd-pool",
            self.pool,
            "--rbd-user",
            self.user,
            "--rbd-mons",
            ",".join(self.monitors),
            "--rbd-keyring",
            self.keyring,
        ]

    def _command(self, *args: str) -> list[str]:
        return script_command("rbd.sh", [*self.node_args(), *args])

    def _images(self, vm: str, data_disk: bool) -> list[str]:
        return [rbd_image(vm, "root"), *([rbd_image(vm, "data")] if data_disk else [])]

    def space(self, runner: Runner) -> PoolSpace | None:
        command = self._command("df")
        out = runner.run(command, timeout=30).stdout
        try:
            pools = {p["name"]: p["stats"] for p in json.loads(out)["pools"]}
            stats = pools[self.pool]
            free, stored = int(stats["max_avail"]), int(stats["stored"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteCommandFailed(
                runner.node, describe(command), 0, f"no pool {self.pool} in `ceph df`: {exc}"
            ) from exc
        return PoolSpace(self.shared or self.pool, self.describe(), free, stored, self.ratio)

    def grow(self, runner: Runner, vm: str, data_gb: int) -> None:
        runner.run(self._command("grow", rbd_image(vm, "data"), str(data_gb)))

    def snapshots(self, runner: Runner, vm: str) -> dict[str, list[str]]:
        out = runner.run(self._command("snap-list", *self._images(vm, True))).stdout
        found: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in out.splitlines():
            if line.startswith("== "):
                current = found.setdefault(line[3:].strip(), [])
            elif current is not None and line.strip():
                current.append(line.strip())
        return found

    def snapshot_create(
        self,
        runner: Runner,
        vm: str,
        data_disk: bool,
        snapshot: str,
        running: bool,
        quiesce: str = "yes",
    ) -> bool:
        domain = vm if running else "-"
        command = self._command(
            "snap-create", domain, quiesce, snapshot, *self._images(vm, data_disk)
        )
        result = runner.run(command, check=False)
        check_create(runner.node, vm, command, result.exit_status, result.stderr)
        return "quiesced=1" in result.stdout

    def snapshot_revert(self, runner: Runner, vm: str, data_disk: bool, snapshot: str) -> None:
        command = self._command("snap-revert", snapshot, *self._images(vm, data_disk))
        result = runner.run(command, check=False)
        check_revert(runner.node, vm, command, result.exit_status, result.stderr)

    def snapshot_delete(
        self, runner: Runner, vm: str, data_disk: bool, snapshot: str, running: bool
    ) -> None:
        runner.run(self._command("snap-delete", snapshot, *self._images(vm, data_disk)))
