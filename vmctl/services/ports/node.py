"""The ports of a node: commands over SSH (Runner) and its libvirt (Hypervisor)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotations only: importing the ports costs next to nothing
    from vmctl.core.addressing import Lease, Observation
    from vmctl.core.domainxml import GuestSpec
    from vmctl.core.inventory import Node
    from vmctl.core.nodecmd import Disks, Reservation
    from vmctl.core.survey import NodeSurvey

# -- a node -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str
    exit_status: int


class Runner(Protocol):
    """Commands on one node (argument lists, quoted once by the adapter)."""

    node: str

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None
    ) -> Result: ...

    def put(self, data: bytes, remote_path: str, mode: int = 0o600) -> None: ...

    def stream(
        self, argv: Sequence[str], on_line: Callable[[str], None], stop: threading.Event
    ) -> None: ...

    def close(self) -> None: ...


class Hypervisor(Protocol):
    """One node's libvirt."""

    def create(
        self,
        spec: GuestSpec,
        disks: Disks,
        seed_files: dict[str, str],
        start: bool = True,
        reservation: Reservation | None = None,
    ) -> None: ...

    def delete(
        self,
        name: str,
        storage_dir: str,
        network: str | None = None,
        mac: str | None = None,
        installation: str | None = None,
    ) -> None: ...

    def observe(self, network: str, timeout: float = 15.0) -> Observation: ...

    def follow_leases(
        self, network: str, on_leases: Callable[[list[Lease]], None], stop: threading.Event
    ) -> None: ...

    def domains(self) -> list[str]: ...

    def addresses(
        self, name: str, source: str = "lease", timeout_s: int | None = None
    ) -> list[tuple[str, str]]: ...

    def console_log(self, name: str, storage_dir: str, max_bytes: int = 1 << 20) -> str:
        """What the VM's serial console has written so far (its boot log), the last
        ``max_bytes``."""
        ...

    # -- power and size (vmctl.adapters.node.power) -------------------------------------------

    def state(self, name: str) -> str | None:
        """libvirt's state of the domain ("running", "shut off", "paused", ...); None if there
        is no such domain."""
        ...

    def start(self, name: str) -> None: ...

    def shutdown(self, name: str) -> None:
        """Ask the guest to power off (ACPI, else the guest agent); returns at once."""
        ...

    def destroy(self, name: str) -> None:
        """Power off now (pulling the plug)."""
        ...

    def reboot(self, name: str, force: bool = False) -> None:
        """Ask the guest to reboot (ACPI, else the agent); ``force``: reset it now."""
        ...

    def set_resources(self, name: str, cpu: int, ram_mb: int) -> None:
        """vCPUs and RAM of a shut-off domain's definition."""
        ...

    def grow_disk(self, name: str, storage_dir: str, data_gb: int) -> None:
        """Grow the data disk of a shut-off VM to ``data_gb`` GiB."""
        ...

    # -- snapshots (vmctl.adapters.node.snapshots) ---------------------------------------------

    def snapshots(self, name: str, storage_dir: str) -> dict[str, list[str]]:
        """Each of the VM's qcow2 disks on the node -> its internal snapshots' names."""
        ...

    def snapshot_create(
        self, name: str, paths: Sequence[str], snapshot: str, running: bool, quiesce: str = "yes"
    ) -> bool:
        """Internal snapshot ``snapshot`` of every disk in ``paths``, all or none (of a running
        domain: one QMP transaction between fs-freeze and fs-thaw; ``quiesce`` "yes", "try" or
        "no"); whether the filesystems were frozen. Unavailable: the agent did not freeze."""
        ...

    def snapshot_revert(self, name: str, paths: Sequence[str], snapshot: str) -> None:
        """Put the disks of a domain that is not running back to ``snapshot`` (NotFound, and
        none changed, when one lacks it)."""
        ...

    def snapshot_delete(
        self, name: str, paths: Sequence[str], snapshot: str, running: bool
    ) -> None: ...

    # -- reconcile (vmctl.adapters.node.survey) ------------------------------------------------

    def survey(self, storage_dir: str, network: str | None = None) -> NodeSurvey:
        """Everything the node holds, in one read-only command (scripts/survey.sh): domains
        with their state and mark, VM directories with their mark, staging directories, the
        network's DHCP reservations."""
        ...

    def remove_staging(self, storage_dir: str, entry: str) -> None:
        """Remove ``storage_dir/.staging/entry`` (a name vmctl gives: NAME.8 hex digits)."""
        ...

    def unreserve(self, network: str, mac: str, ip: str) -> None:
        """Delete the DHCP reservation of ``mac`` with ``ip`` from ``network``."""
        ...

    def close(self) -> None:
        """Drop the connection; the next call opens a new one."""
        ...


Connect = Callable[["Node"], Hypervisor]  # a node of the inventory -> its hypervisor
