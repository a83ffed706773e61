"""The ports: what the services need from the outside world, as small Protocols.

Adapters (``vmctl.adapters``) implement them over Fabric, libvirt, PostgreSQL and Redis; unit tests
pass fakes. A service never names an adapter class, only these.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only: importing the ports costs next to nothing
    from datetime import datetime

    from vmctl.core.addressing import Lease, Observation
    from vmctl.core.domainxml import GuestSpec
    from vmctl.core.inventory import AddressPool, Node
    from vmctl.core.nodecmd import Disks, Reservation
    from vmctl.core.records import IpChange, NewVm, NodeUsage, VmRecord
    from vmctl.core.snapshots import Snapshot
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


# -- a guest ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CloudInit:
    status: str  # "done", "degraded" (finished with recoverable errors) or "error"
    detail: str


class GuestProbe(Protocol):
    """Questions to a guest over SSH, its host key pinned."""

    def host_key(self, ip: str, port: int = 22, timeout: float = 5.0) -> str | None:
        """The server's host key as "TYPE BASE64", or None if SSH does not answer (yet)."""
        ...

    def cloud_init(
        self, ip: str, user: str, key_file: Path, host_key: str, timeout: float
    ) -> CloudInit | None:
        """Log in and wait (up to ``timeout``) for cloud-init to finish: None when it could not
        be asked or did not say; Unavailable when the key is refused."""
        ...


# -- PostgreSQL -------------------------------------------------------------------------------


class VmReader(Protocol):
    def get(self, name: str) -> VmRecord:
        """NotFound if there is no such VM."""
        ...


class VmLocks(Protocol):
    def vm_lock(self, name: str, operation: str, timeout: float) -> AbstractContextManager[None]:
        """Hold the VM's operation lock while the block runs (on any manager, one holder at a
        time; let go when the holder dies); Busy after ``timeout`` s of waiting."""
        ...

    def installation_id(self) -> str:
        """The id of this vmctl installation, in the ownership mark of what it makes."""
        ...


class VmStore(VmReader, Protocol):
    def claim(
        self,
        vm: NewVm,
        choose: Callable[[builtins.list[NodeUsage]], str],
        host_key: str | None = None,
        pool_of: Callable[[str], AddressPool | None] = ...,
    ) -> VmRecord: ...

    def list(
        self, node: str | None = None, state: str | None = None, project: str | None = None
    ) -> builtins.list[VmRecord]: ...

    def list_contract_json(
        self, project: str, node: str | None = None, state: str | None = None
    ) -> str: ...

    def set_state(self, name: str, state: str) -> VmRecord: ...

    def resize(
        self,
        name: str,
        cpu: int,
        ram_mb: int,
        disk_gb: int,
        check: Callable[[builtins.list[NodeUsage]], None],
    ) -> VmRecord:
        """Record new sizes; ``check`` sees every node's usage (this VM's old sizes included)
        under the claim lock that create takes, and raises (CapacityError) to refuse."""
        ...

    def delete(self, name: str) -> bool: ...

    def usage(self) -> builtins.list[NodeUsage]: ...


class AddressStore(Protocol):
    def record_ip(self, name: str, mac: str, ip: str, source: str) -> IpChange | None: ...

    def record_phone_home(self, name: str, secret_hash: str, ip: str) -> IpChange | None: ...


class EventLog(Protocol):
    def add_event(
        self, vm: str | None, node: str | None, action: str, result: str, detail: dict[str, Any]
    ) -> int: ...

    def events(
        self, vm: str | None = None, since: datetime | None = None, limit: int | None = None
    ) -> builtins.list[dict[str, Any]]: ...


class TokenStore(Protocol):
    def create_token(self, project: str, token_hash: str, name: str = "") -> int: ...

    def token_project(self, token_hash: str) -> str | None: ...

    def tokens(self) -> builtins.list[dict[str, Any]]: ...

    def revoke_token(self, token_id: int) -> None: ...


class Heartbeats(Protocol):
    def heartbeat(self, process: str, kind: str, detail: dict[str, Any]) -> None: ...

    def forget_heartbeat(self, process: str) -> None: ...

    def alive(self, kind: str, within_s: float) -> builtins.list[str]: ...


class SnapshotStore(Protocol):
    def add_snapshot(self, vm: str, name: str, vm_state: str, quiesced: bool) -> Snapshot:
        """Conflict when the VM has a snapshot of that name already."""
        ...

    def snapshots(self, vm: str) -> builtins.list[Snapshot]: ...

    def get_snapshot(self, vm: str, name: str) -> Snapshot:
        """NotFound if there is no such snapshot."""
        ...

    def delete_snapshot(self, vm: str, name: str) -> bool: ...


class Store(
    VmStore,
    VmLocks,
    AddressStore,
    EventLog,
    TokenStore,
    Heartbeats,
    SnapshotStore,
    Protocol,
):
    """All of PostgreSQL that vmctl uses."""

    def ping(self) -> None: ...


# -- Redis ------------------------------------------------------------------------------------


class SubscriptionLost(Exception):
    """The IP channel is gone (Redis went away): poll PostgreSQL from then on."""


class Subscription(Protocol):
    def get(self, timeout: float) -> dict[str, Any] | None:
        """The next message (a dict), or None after ``timeout`` s; SubscriptionLost if the
        channel is gone."""
        ...

    def close(self) -> None: ...


class Cache(Protocol):
    """Which node holds which VM (a hint: PostgreSQL decides), and the IP channel."""

    def get_node(self, name: str) -> str | None: ...

    def set_node(self, name: str, node: str) -> None: ...

    def forget(self, name: str) -> None: ...

    def keys(self) -> list[str]: ...

    def publish_ip(self, message: dict[str, Any]) -> None: ...

    def subscribe_ip(self) -> Subscription | None: ...


Connect = Callable[["Node"], Hypervisor]  # a node of the inventory -> its hypervisor
