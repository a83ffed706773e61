"""The ports of PostgreSQL: the VM rows, locks, addresses, events, tokens, heartbeats,
snapshots, base images, the cloud's metrics, the API's idempotency keys, and ``Store``, all of
them."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from datetime import datetime

    from vmctl.core.idempotency import KeptAnswer
    from vmctl.core.images import ImageRecord
    from vmctl.core.inventory import AddressPool
    from vmctl.core.records import (
        CloudFigures,
        IpChange,
        NewVm,
        NodeUsage,
        VmRecord,
        WatchChanges,
    )
    from vmctl.core.snapshots import Snapshot

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
        self,
        node: str | None = None,
        state: str | None = None,
        project: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> builtins.list[VmRecord]: ...

    def count(
        self, node: str | None = None, state: str | None = None, project: str | None = None
    ) -> int: ...

    def vms_version(self) -> int:
        """A number that moves whenever any VM's row changes (a reader that saw it unchanged may
        keep what it read of the VMs)."""
        ...

    def watch_changes(self, since: int | None, states: Sequence[str]) -> WatchChanges:
        """The VMs in ``states`` that changed after version ``since`` and the names that left
        them (deleted, or now in another state); all VMs in ``states`` (``whole``) when ``since``
        is None or older than what the store still remembers."""
        ...

    def list_json(
        self,
        node: str | None = None,
        state: str | None = None,
        project: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Iterator[str]: ...

    def list_contract_page(
        self,
        project: str,
        node: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> tuple[str, int, str | None]: ...

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

    def begin_move(
        self,
        name: str,
        node: str,
        check: Callable[[builtins.list[NodeUsage]], None],
        pool: AddressPool | None,
    ) -> VmRecord:
        """Take room on ``node`` (``check`` sees every node's usage under the claim lock and
        raises to refuse) and an address of ``pool`` (managed networks) for a move there."""
        ...

    def end_move(self, name: str, done: bool) -> VmRecord:
        """``done``: the VM is on the move's node with its address; else the move is undone."""
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

    def snapshot_names(self) -> dict[str, builtins.list[str]]:
        """Every VM's snapshot names, oldest first (VMs without any left out)."""
        ...

    def get_snapshot(self, vm: str, name: str) -> Snapshot:
        """NotFound if there is no such snapshot."""
        ...

    def delete_snapshot(self, vm: str, name: str) -> bool: ...


class ImageStore(Protocol):
    def record_image(self, name: str, location: str, sha256: str, size_bytes: int) -> ImageRecord:
        """Record an import (now, by the store's actor), replacing an earlier one's record."""
        ...

    def image_records(self) -> builtins.list[ImageRecord]: ...

    def forget_image(self, name: str, location: str) -> bool: ...


class MetricsReader(Protocol):
    def cloud_figures(self, bounds_s: Sequence[float]) -> CloudFigures: ...


class IdempotencyStore(Protocol):
    def idempotency_hold(
        self, scope: str, key: str, timeout: float
    ) -> AbstractContextManager[None]:
        """Hold the idempotency key (scope, key) while the block runs (one holder at a time on
        any replica; let go when the holder dies); Busy after ``timeout`` s of waiting."""
        ...

    def kept_answer(self, scope: str, key: str) -> KeptAnswer | None:
        """The answer kept for the key; None if there is none or it expired."""
        ...

    def keep_answer(self, scope: str, key: str, answer: KeptAnswer, ttl_s: float) -> None:
        """Keep ``answer`` for the key for ``ttl_s`` s (an unexpired one stays as it was)."""
        ...


class Store(
    VmStore,
    VmLocks,
    AddressStore,
    EventLog,
    TokenStore,
    Heartbeats,
    SnapshotStore,
    ImageStore,
    MetricsReader,
    IdempotencyStore,
    Protocol,
):
    """All of PostgreSQL that vmctl uses."""

    def ping(self) -> None: ...
