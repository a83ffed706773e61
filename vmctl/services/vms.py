"""The VM service: the one way into vmctl for the CLI and the HTTP API.

Everything outside (node hypervisors, PostgreSQL, Redis, guests) comes in through the ports of
``vmctl.services.ports``. Input is checked before anything is touched; once a node has been
touched, any failure removes what was made (see ``vmctl.services.create``).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmctl.core import placement, tokens, validation
from vmctl.core.addressing import SOURCES
from vmctl.core.errors import Forbidden, InvalidInput, NotFound, Unavailable, VmctlError
from vmctl.core.records import NewVm, NodeUsage, VmRecord, default_actor
from vmctl.core.requests import CreateRequest
from vmctl.services.ports import Cache, Connect, GuestProbe, Store
from vmctl.services.ports.storage import PoolSpace, Storage

if TYPE_CHECKING:
    from vmctl.core.inventory import Inventory, Node
    from vmctl.core.snapshots import Snapshot
    from vmctl.services.batch import Outcome
    from vmctl.services.move import DrainResult
    from vmctl.services.reconcile import Outcome as ReconcileOutcome

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Login:
    """What `vmctl ssh` needs to log into a VM."""

    user: str
    ip: str
    host_key: str


@dataclass
class VmService:
    inventory: Inventory
    store: Store
    cache: Cache
    connect: Connect
    probe: GuestProbe
    progress: Progress = lambda _msg: None
    actor: str = field(default_factory=default_actor)
    guest_key: Path | None = None  # private key that logs into guests (asks cloud-init)
    sources: Sequence[str] = SOURCES  # how to learn addresses when no watcher runs
    phone_home_base: str | None = None  # the internal API's URL guests call home to, if any
    default_keys: Sequence[str] = ()  # public keys for guests made without any
    lock_timeout: float = 30.0  # how long an operation waits for another one on the same VM
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("vmctl"))
    storage_of: Callable[[Node], Storage] | None = None  # None: ask the node's hypervisor
    per_node: int = 4  # creates whose node work runs at once on one node (`create --count`)
    _slots: dict[str, threading.BoundedSemaphore] = field(default_factory=dict, repr=False)
    _slots_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # None: ``per_node`` counts this process's creates; else the slot of a node across every
    # process (`vmctl worker`: PostgreSQL locks, vmctl.services.jobs.shared_node_slot)
    slot_of: Callable[[str], AbstractContextManager[object]] | None = None

    def node_slot(self, node: str) -> AbstractContextManager[object]:
        """Held while a create's node work (disks, seed, start) runs on ``node``."""
        if self.slot_of is not None:
            return self.slot_of(node)
        with self._slots_lock:
            return self._slots.setdefault(node, threading.BoundedSemaphore(self.per_node))

    def storage(self, node: Node) -> Storage:
        """Where ``node`` keeps VM disks (no connection is made)."""
        if self.storage_of is not None:
            return self.storage_of(node)
        return self.connect(node).storage

    def pool_spaces(self, nodes: Sequence[Node] | None = None) -> dict[str, PoolSpace | str]:
        """Room in each storage that ``nodes`` (default: all) share, asked of its cluster
        through the first of its nodes that answers; why it is unknown when none does."""
        spaces: dict[str, PoolSpace | str] = {}
        for node in self.inventory.nodes if nodes is None else nodes:
            key = self.storage(node).shared
            if key is None or isinstance(spaces.get(key), PoolSpace):
                continue
            try:
                space = self.connect(node).space()
            except VmctlError as exc:
                spaces.setdefault(key, f"{node.name}: {exc}")
                continue
            if space is not None:
                spaces[key] = space
        return spaces

    def locked(self, name: str, operation: str) -> AbstractContextManager[None]:
        """The VM's operation lock (Busy after ``lock_timeout`` s)."""
        return self.store.vm_lock(name, operation, self.lock_timeout)

    # -- reading -----------------------------------------------------------------------------

    def get(self, name: str) -> VmRecord:
        return self.store.get(validation.name(name))

    def get_in_project(self, name: str, project: str) -> VmRecord:
        """A VM of ``project``; NotFound for another project's (as if it did not exist)."""
        vm = self.get(name)
        if vm.project != project:
            raise NotFound(f"no VM named {vm.name}")
        return vm

    def list_vms(
        self,
        node: str | None = None,
        state: str | None = None,
        project: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[VmRecord]:
        """VMs by name; a page of them with ``limit`` (at most that many) and ``after`` (names
        after that one)."""
        self._check_list(node, limit, after)
        return self.store.list(node=node, state=state, project=project, limit=limit, after=after)

    def count_vms(
        self, node: str | None = None, state: str | None = None, project: str | None = None
    ) -> int:
        self._check_list(node)
        return self.store.count(node=node, state=state, project=project)

    def list_json(
        self,
        node: str | None = None,
        state: str | None = None,
        project: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Iterator[str]:
        """``list_vms`` as the elements of `vmctl list -o json`, streamed from PostgreSQL."""
        self._check_list(node, limit, after)
        return self.store.list_json(
            node=node, state=state, project=project, limit=limit, after=after
        )

    def _check_list(
        self, node: str | None, limit: int | None = None, after: str | None = None
    ) -> None:
        if node is not None:
            self.inventory.node(node)  # NotFound for an unknown node
        if limit is not None and limit < 0:
            raise InvalidInput("limit", f"must be 0 or more, not {limit}")
        if after is not None:
            validation.name(after, "after")

    def list_contract_page(
        self,
        project: str,
        node: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> tuple[str, int, str | None]:
        """The HTTP API's list (a page of it with ``limit``/``after``), as JSON text built by
        PostgreSQL; with how many VMs it holds and the last one's name."""
        self._check_list(node, limit, after)
        return self.store.list_contract_page(project, node, state, limit, after)

    def nodes(self) -> list[dict[str, Any]]:
        usage = {u.node: u for u in self.store.usage()}
        spaces = self.pool_spaces()
        rows = []
        for load in self.loads(list(usage.values()), spaces):
            free = placement.free(load)
            node = self.inventory.node(load.name)
            rows.append(
                {
                    "name": load.name,
                    "storage": self.storage(node).describe(),
                    "vms": usage[load.name].vms if load.name in usage else 0,
                    "cpu_used": load.used.cpu,
                    "cpu_free": free.cpu,
                    "ram_mb_used": load.used.ram_mb,
                    "ram_mb_free": free.ram_mb,
                    "disk_gb_used": load.used.disk_gb,
                    "disk_gb_free": free.disk_gb,
                }
            )
        return rows

    def login(self, name: str) -> Login:
        vm = self.get(name)
        if not vm.ip:
            raise Unavailable(f"{name} has no known IP address yet (try `vmctl wait {name}`)")
        if not vm.host_key:
            raise Unavailable(f"no host key is recorded for {name}")
        return Login(self.inventory.image(vm.image).default_user, vm.ip, vm.host_key)

    # -- create, wait, delete ----------------------------------------------------------------

    def check(self, req: CreateRequest) -> NewVm:
        """Everything that can be refused before anything is touched (exit 2 in the CLI)."""
        from vmctl.services import create  # each command imports only the steps it runs

        return create.check(self, req)

    def create(self, req: CreateRequest) -> VmRecord:
        from vmctl.services import create

        return create.create(self, req)

    def create_many(
        self, requests: list[CreateRequest], until: str | None, timeout: float
    ) -> list[Outcome]:
        """Several VMs side by side (see ``vmctl.services.batch``)."""
        from vmctl.services import batch

        return batch.create_many(self, requests, until, timeout)

    def wait(self, name: str, timeout: float, until: str = "cloud-init") -> VmRecord:
        from vmctl.services import wait

        return wait.wait(self, name, timeout, until)

    # -- snapshots (vmctl.services.snapshots) ------------------------------------------------

    def snapshot_create(self, name: str, snapshot: str, quiesce: bool = True) -> Snapshot:
        from vmctl.services import snapshots

        return snapshots.create(self, name, snapshot, quiesce)

    def snapshot_list(self, name: str) -> list[Snapshot]:
        from vmctl.services import snapshots

        return snapshots.list_snapshots(self, name)

    def snapshot_revert(self, name: str, snapshot: str) -> VmRecord:
        from vmctl.services import snapshots

        return snapshots.revert(self, name, snapshot)

    def snapshot_delete(self, name: str, snapshot: str) -> None:
        from vmctl.services import snapshots

        snapshots.delete(self, name, snapshot)

    def delete(self, name: str) -> None:
        from vmctl.services import delete

        delete.delete(self, name)

    # -- day 2 -------------------------------------------------------------------------------

    def start(self, name: str) -> VmRecord:
        from vmctl.services import lifecycle

        return lifecycle.start(self, name)

    def stop(self, name: str, timeout: float = 60.0, force: bool = False) -> VmRecord:
        from vmctl.services import lifecycle

        return lifecycle.stop(self, name, timeout, force)

    def reboot(self, name: str, force: bool = False) -> VmRecord:
        from vmctl.services import lifecycle

        return lifecycle.reboot(self, name, force)

    def resize(
        self, name: str, ram: object = None, cpu: object = None, disk: object = None
    ) -> VmRecord:
        from vmctl.services import lifecycle

        return lifecycle.resize(self, name, ram=ram, cpu=cpu, disk=disk)

    def move(self, name: str, to: str, timeout: float = 120.0) -> VmRecord:
        from vmctl.services import move

        return move.move(self, name, to, timeout)

    def drain(self, node: str, stop_local: bool = False, timeout: float = 120.0) -> DrainResult:
        from vmctl.services import move

        return move.drain(self, node, stop_local, timeout)

    def console_log(self, name: str) -> str:
        """What the VM's serial console has written so far (the last MiB)."""
        vm = self.get(name)
        node = self.inventory.node(vm.node)
        return self.connect(node).console_log(vm.name)

    def console_target(self, name: str) -> tuple[Node, str]:
        """The node to reach the VM's serial console through, and the domain's name."""
        vm = self.get(name)
        return self.inventory.node(vm.node), vm.name

    def events(
        self, name: str | None = None, since: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The audit log, oldest first: of one VM (also after it was deleted), since an age
        (`15m`, `2h`, `7d`) or an ISO time, the newest ``limit``."""
        from datetime import UTC, datetime

        vm = None if name is None else validation.name(name)
        when = None if since is None else validation.since(since, datetime.now(UTC))
        return self.store.events(vm, since=when, limit=limit)

    # -- reconcile (vmctl.services.reconcile) ------------------------------------------------

    def reconcile_report(self, node: str | None = None) -> ReconcileOutcome:
        """What differs between PostgreSQL, the nodes and Redis; changes nothing."""
        from vmctl.services import reconcile

        return reconcile.report(self, node)

    def reconcile_fix(self, node: str | None = None) -> ReconcileOutcome:
        """Repair what is safe, then report what is left."""
        from vmctl.services import reconcile

        return reconcile.fix(self, node)

    # -- addresses ---------------------------------------------------------------------------

    def look_now(self, name: str) -> VmRecord:
        """Look at the VM's node for its address now (the prototype's cron, `POST /ip/`)."""
        from vmctl.services.watcher import Watcher

        vm = self.get(name)
        finder = Watcher(
            self.inventory, self.store, self.cache, self.connect, self.log, self.sources
        )
        _rows, problems = finder.once([vm.name])
        if problems:
            raise Unavailable("; ".join(problems))
        return self.get(vm.name)

    def phone_home(self, name: str, secret: str, source: str) -> bool:
        """The guest's cloud-init called home from ``source`` with its one-time secret: record
        the address. Forbidden from outside the VM's subnet or with a wrong secret. True when
        it changed the recorded address."""
        from vmctl.services.watcher import change_message

        vm = self.get(name)
        subnet = self.inventory.node(vm.node).network.subnet
        try:
            inside = ipaddress.ip_address(source) in subnet
        except ValueError:
            inside = False
        if not inside:
            raise Forbidden(f"{name}: a call from {source or 'nowhere'} is not from {subnet}")
        change = self.store.record_phone_home(vm.name, tokens.digest(secret), source)
        if change is None:
            return False
        self.cache.publish_ip(change_message(change))
        return True

    def ping(self) -> None:
        """StoreUnavailable unless PostgreSQL answers (readiness)."""
        self.store.ping()

    # -- helpers -----------------------------------------------------------------------------

    def loads(
        self, usages: Sequence[NodeUsage], spaces: dict[str, PoolSpace | str] | None = None
    ) -> list[placement.NodeLoad]:
        """Each node as placement sees it. The disks of a node whose storage is shared count
        against that storage (``spaces``: its room, asked of the cluster; unknown: no room),
        together with those of every node that shares it."""
        used = {u.node: u for u in usages}
        shared = {node.name: self.storage(node).shared for node in self.inventory.nodes}
        pooled: dict[str, int] = {}
        for name, key in shared.items():
            if key is not None and name in used:
                pooled[key] = pooled.get(key, 0) + used[name].disk_gb
        loads = []
        for node in self.inventory.nodes:
            key = shared[node.name]
            pool = None
            if key is not None:
                space = (spaces or {}).get(key, "not asked")
                pool = PoolUse(
                    space.label
                    if isinstance(space, PoolSpace)
                    else f"{key} (room unknown: {space})",
                    space.capacity_gb if isinstance(space, PoolSpace) else 0,
                    pooled.get(key, 0),
                )
            loads.append(placement_load(node, used.get(node.name), pool))
        return loads


@dataclass(frozen=True)
class PoolUse:
    """Shared storage as placement counts it: GiB it may hold, GiB its VMs' disks take."""

    label: str
    capacity_gb: int
    used_gb: int


def placement_load(
    node: Node, usage: NodeUsage | None, pool: PoolUse | None = None
) -> placement.NodeLoad:
    """A node of the inventory and what its VMs take, as placement sees it; with ``pool``, its
    disk is that of the shared storage (capacity and use of all the nodes that share it)."""
    disk_cap, disk_ratio = node.capacity.disk_gb, node.overcommit.disk
    disk_used = usage.disk_gb if usage else 0
    if pool is not None:  # the pool's ratio is in its capacity already
        disk_cap, disk_ratio, disk_used = pool.capacity_gb, 1.0, pool.used_gb
    return placement.NodeLoad(
        name=node.name,
        capacity=placement.Resources(node.capacity.cpu, node.capacity.ram_mb, disk_cap),
        overcommit_cpu=node.overcommit.cpu,
        overcommit_ram=node.overcommit.ram,
        overcommit_disk=disk_ratio,
        used=placement.Resources(
            usage.cpu if usage else 0, usage.ram_mb if usage else 0, disk_used
        ),
        groups=usage.groups if usage else frozenset(),
        disk_in=pool.label if pool is not None else None,
    )
