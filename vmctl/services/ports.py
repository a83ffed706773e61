"""The ports: what the services need from the outside world, as small Protocols.

Adapters (``vmctl.adapters``) implement them over Fabric, libvirt, PostgreSQL and Redis; unit tests
pass fakes. A service never names an adapter class, only these.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only: importing the ports costs next to nothing
    from vmctl.core.addressing import Lease, Observation
    from vmctl.core.domainxml import GuestSpec
    from vmctl.core.inventory import AddressPool, Node
    from vmctl.core.nodecmd import Disks, Reservation
    from vmctl.core.records import IpChange, NewVm, NodeUsage, VmRecord

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
        self, name: str, storage_dir: str, network: str | None = None, mac: str | None = None
    ) -> None: ...

    def observe(self, network: str, timeout: float = 15.0) -> Observation: ...

    def follow_leases(
        self, network: str, on_leases: Callable[[list[Lease]], None], stop: threading.Event
    ) -> None: ...

    def domains(self) -> list[str]: ...

    def addresses(
        self, name: str, source: str = "lease", timeout_s: int | None = None
    ) -> list[tuple[str, str]]: ...

    def console_log(self, name: str, storage_dir: str) -> str: ...

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

    def delete(self, name: str) -> bool: ...

    def usage(self) -> builtins.list[NodeUsage]: ...


class AddressStore(Protocol):
    def record_ip(self, name: str, mac: str, ip: str, source: str) -> IpChange | None: ...

    def record_phone_home(self, name: str, secret_hash: str, ip: str) -> IpChange | None: ...


class EventLog(Protocol):
    def add_event(
        self, vm: str | None, node: str | None, action: str, result: str, detail: dict[str, Any]
    ) -> int: ...

    def events(self, vm: str) -> builtins.list[dict[str, Any]]: ...


class TokenStore(Protocol):
    def create_token(self, project: str, token_hash: str, name: str = "") -> int: ...

    def token_project(self, token_hash: str) -> str | None: ...

    def tokens(self) -> builtins.list[dict[str, Any]]: ...

    def revoke_token(self, token_id: int) -> None: ...


class Heartbeats(Protocol):
    def heartbeat(self, process: str, kind: str, detail: dict[str, Any]) -> None: ...

    def forget_heartbeat(self, process: str) -> None: ...

    def alive(self, kind: str, within_s: float) -> builtins.list[str]: ...


class Store(VmStore, AddressStore, EventLog, TokenStore, Heartbeats, Protocol):
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
