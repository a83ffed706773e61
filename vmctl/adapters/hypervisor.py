"""What vmctl does to a node's libvirt, through a Runner: create, delete, look up addresses.

The command lines are built by the pure functions of ``vmctl.core.nodecmd``.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from vmctl.adapters.node.power import PowerMixin
from vmctl.adapters.node.snapshots import SnapshotsMixin
from vmctl.adapters.node.survey import SurveyMixin
from vmctl.adapters.storage import storage_for
from vmctl.core.addressing import Lease, Observation
from vmctl.core.domainxml import GuestSpec
from vmctl.core.domainxml import render as render_domain
from vmctl.core.errors import RemoteCommandFailed
from vmctl.core.nodecmd import (
    VIRSH,
    Disks,
    Reservation,
    create_args,
    delete_args,
    domifaddr_command,
    observe_command,
    parse_domifaddr,
    parse_lease_status,
    parse_observation,
    script_command,
    staged_archive,
)
from vmctl.services.ports import Runner
from vmctl.services.ports.storage import PoolSpace, Storage

if TYPE_CHECKING:
    from vmctl.core.inventory import Node

CONSOLE_LOG_BYTES = 1 << 20


class LibvirtOverSsh(PowerMixin, SnapshotsMixin, SurveyMixin):
    """One node's libvirt, reached through a Runner (the Hypervisor port): create, delete and
    addresses here; power and size in ``vmctl.adapters.node``. Its VM disks are where
    ``storage`` (the Storage port) keeps them."""

    def __init__(self, runner: Runner, storage: Storage) -> None:
        self.runner = runner
        self.storage = storage

    @classmethod
    def of(cls, node: Node, runner: Runner) -> LibvirtOverSsh:
        return cls(runner, storage_for(node))

    def space(self) -> PoolSpace | None:
        return self.storage.space(self.runner)

    def create(
        self,
        spec: GuestSpec,
        disks: Disks,
        seed_files: dict[str, str],
        start: bool = True,
        reservation: Reservation | None = None,
        adopt: bool = False,
    ) -> None:
        """Upload the domain XML and seed, then run create-vm.sh (which cleans up on failure).
        ``adopt``: the disks exist in shared storage already (a move): define, do not start."""
        spec = replace(spec, disks=self.storage.disks(spec.name, spec.data_disk))
        disks = replace(disks, base_image=self.storage.base(disks.base_image, spec.image))
        staging = f"{spec.storage_dir}/.staging/{spec.name}.{secrets.token_hex(4)}"
        files = {"domain.xml": render_domain(spec), **seed_files}
        # One round trip: the script, its arguments, and the files as a tar on its stdin (it
        # makes the staging directory and removes it however it ends).
        self.runner.run(
            script_command(
                "create-vm.sh",
                [
                    *create_args(spec, disks, staging, start and not adopt, reservation, True),
                    *self.storage.node_args(),
                    *(["--adopt"] if adopt else []),
                ],
            ),
            stdin=staged_archive(files),
        )

    def delete(
        self,
        name: str,
        network: str | None = None,
        mac: str | None = None,
        installation: str | None = None,
        keep_disks: bool = False,
    ) -> None:
        """Remove the VM (and its DHCP reservation in ``network``, when given); with
        ``installation``, only if its mark names that installation. ``keep_disks``: only the
        domain and the node's local files (the disks are shared, and the VM moved)."""
        args = delete_args(name, self.storage.local_dir, network, mac, installation)
        args += self.storage.node_args()
        if keep_disks:
            args.append("--keep-disks")
        self.runner.run(script_command("delete-vm.sh", args))

    def observe(self, network: str, timeout: float = 15.0) -> Observation:
        """The node's DHCP leases in ``network`` and its ARP table, in one command."""
        return parse_observation(self.runner.run(observe_command(network), timeout=timeout).stdout)

    def follow_leases(
        self,
        network: str,
        on_leases: Callable[[list[Lease]], None],
        stop: threading.Event,
    ) -> None:
        """Hand ``network``'s DHCP leases to ``on_leases`` at once and every time the node's DHCP
        server changes them, until ``stop`` (scripts/watch-leases.sh follows libvirt's lease
        file). RemoteCommandFailed with exit status 3: there is no such libvirt network."""

        def on_line(line: str) -> None:
            if line.startswith("leases "):
                on_leases(parse_lease_status(line.removeprefix("leases ")))

        self.runner.stream(script_command("watch-leases.sh", [network]), on_line, stop)

    def domains(self) -> list[str]:
        out = self.runner.run([*VIRSH, "list", "--all", "--name"]).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def addresses(
        self, name: str, source: str = "lease", timeout_s: int | None = None
    ) -> list[tuple[str, str]]:
        """(mac, ipv4) pairs from `virsh domifaddr --source SOURCE`; none if there are none
        or the command fails (no agent, domain not running yet, no answer in ``timeout_s``)."""
        command = domifaddr_command(name, source)
        if timeout_s is not None:  # a guest agent that is not up yet makes virsh wait
            command = ["timeout", str(timeout_s), *command]
        try:
            out = self.runner.run(command).stdout
        except RemoteCommandFailed:
            return []
        return parse_domifaddr(out)

    def close(self) -> None:
        self.runner.close()

    def console_log(self, name: str, max_bytes: int = CONSOLE_LOG_BYTES) -> str:
        path = f"{self.storage.local_dir}/{name}/console.log"
        command = ["tail", "-c", str(max_bytes), path]
        return self.runner.run(command, check=False).stdout
