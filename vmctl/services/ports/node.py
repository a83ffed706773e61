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
    from vmctl.services.ports.storage import PoolSpace, Storage

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
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> Result: ...

    def put(self, data: bytes, remote_path: str, mode: int = 0o600) -> None: ...

    def stream(
        self, argv: Sequence[str], on_line: Callable[[str], None], stop: threading.Event
    ) -> None: ...

    def close(self) -> None: ...


class Hypervisor(Protocol):
    """One node's libvirt, with its VM disks where ``storage`` keeps them."""

    storage: Storage

    def space(self) -> PoolSpace | None:
        """Room in the node's shared storage (asked of the cluster); None: node-local."""
        ...

    def create(
        self,
        spec: GuestSpec,
        disks: Disks,
        seed_files: dict[str, str],
        start: bool = True,
        reservation: Reservation | None = None,
        adopt: bool = False,
    ) -> None:
        """Make the VM's disks and seed, define and (``start``) start it; ``adopt``: its disks
        exist in shared storage already (it moves here): only define it."""
        ...

    def delete(
        self,
        name: str,
        network: str | None = None,
        mac: str | None = None,
        installation: str | None = None,
        keep_disks: bool = False,
    ) -> None: ...

    def observe(self, network: str, timeout: float = 15.0) -> Observation: ...

    def follow_leases(
        self, network: str, on_leases: Callable[[list[Lease]], None], stop: threading.Event
    ) -> None: ...

    def domains(self) -> list[str]: ...

    def addresses(
        self, name: str, source: str = "lease", timeout_s: int | None = None
    ) -> list[tuple[str, str]]: ...

    def console_log(self, name: str, max_bytes: int = 1 << 20) -> str:
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

    def grow_disk(self, name: str, data_gb: int) -> None:
        """Grow the data disk of a shut-off VM to ``data_gb`` GiB."""
        ...

    # -- snapshots (vmctl.adapters.node.snapshots) ---------------------------------------------

    def snapshots(self, name: str) -> dict[str, list[str]]:
        """Each of the VM's disks -> its snapshots' names."""
        ...

    def snapshot_create(
        self, name: str, data_disk: bool, snapshot: str, running: bool, quiesce: str = "yes"
    ) -> bool:
        """Snapshot ``snapshot`` of every disk, all or none (of a running domain: between
        fs-freeze and fs-thaw; ``quiesce`` "yes", "try" or "no"); whether the filesystems were
        frozen. Unavailable: the agent did not freeze."""
        ...

    def snapshot_revert(self, name: str, data_disk: bool, snapshot: str) -> None:
        """Put the disks of a domain that is not running back to ``snapshot`` (NotFound, and
        none changed, when one lacks it)."""
        ...

    def snapshot_delete(self, name: str, data_disk: bool, snapshot: str, running: bool) -> None:
        """Delete ``snapshot`` from the disks that hold it."""
        ...

    # -- reconcile (vmctl.adapters.node.survey) ------------------------------------------------

    def survey(self, network: str | None = None, images: bool = True) -> NodeSurvey:
        """Everything the node holds, in one read-only command (scripts/survey.sh): domains
        with their state and mark, VM directories with their mark, staging directories, the
        network's DHCP reservations; ``images``: the VM images of its shared storage."""
        ...

    def remove_staging(self, entry: str) -> None:
        """Remove ``LOCAL_DIR/.staging/entry`` (a name vmctl gives: NAME.8 hex digits)."""
        ...

    def unreserve(self, network: str, mac: str, ip: str) -> None:
        """Delete the DHCP reservation of ``mac`` with ``ip`` from ``network``."""
        ...

    def close(self) -> None:
        """Drop the connection; the next call opens a new one."""
        ...


Connect = Callable[["Node"], Hypervisor]  # a node of the inventory -> its hypervisor
