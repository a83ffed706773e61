"""In-memory fakes of the ports (vmctl.services.ports) for unit tests of the services: each one
records what it is asked and can be told to fail at a given call."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vmctl.core.addressing import Lease, Observation
from vmctl.core.domainxml import GuestSpec
from vmctl.core.errors import Busy, Conflict, NotFound, StoreUnavailable
from vmctl.core.idempotency import KeptAnswer
from vmctl.core.images import ImageRecord
from vmctl.core.inventory import AddressPool, Inventory
from vmctl.core.nodecmd import Disks, Reservation
from vmctl.core.records import (
    RESULTS,
    IpChange,
    NewVm,
    NodeUsage,
    VmRecord,
    WatchChanges,
    WatchTarget,
)
from vmctl.services.ports import CloudInit, Subscription
from vmctl.services.ports.storage import PoolSpace
from vmctl.services.vms import VmService

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1lMgjO1GQ0e7oE5hSVbQK4R3V0iZyv9u3Ds1m8dXj test"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)

INVENTORY = {
    "defaults": {"image": "debian-12", "ram_mb": 512, "cpu": 1, "disk_gb": 2, "root_gb": 4},
    "images": {"debian-12": {"path": "/srv/base/debian-12.qcow2", "default_user": "debian"}},
    "nodes": [
        {
            "name": name,
            "ssh": {"host": "127.0.0.1"},
            "capacity": {"cpu": 8, "ram_mb": 8192, "disk_gb": 100},
            "storage": {"type": "dir", "path": "/srv/vms"},
            "network": {"name": "vmnet", "subnet": subnet, "gateway": gateway},
        }
        for name, subnet, gateway in (
            ("kvm1", "10.9.1.0/24", "10.9.1.1"),
            ("kvm2", "10.9.2.0/24", "10.9.2.1"),
        )
    ],
}


class Failing:
    """Raise ``error`` at the named calls: ``fail_at["add_event:failed"] = error``."""

    def __init__(self) -> None:
        self.fail_at: dict[str, BaseException] = {}
        self.calls: list[str] = []

    def _call(self, what: str) -> None:
        self.calls.append(what)
        error = self.fail_at.get(what) or self.fail_at.get(what.split(":")[0])
        if error is not None:
            raise error


class ChangesByComparison:
    """``Store.watch_changes`` by its contract, for fakes whose ``vms`` is a dict by name: what
    the VMs were at ``since`` (kept per version answered) against what they are now; whole when
    that version is not kept. ``watch_reads`` tells how each call was answered."""

    vms: dict[str, VmRecord]

    def vms_version(self) -> int:
        return hash(repr(sorted(self.vms.items())))

    def watch_changes(self, since: int | None, states: Sequence[str]) -> WatchChanges:
        watched_at: dict[int, dict[str, WatchTarget]] = self.__dict__.setdefault("_at", {})
        reads: list[str] = self.__dict__.setdefault("watch_reads", [])
        now = {n: WatchTarget.of(vm) for n, vm in self.vms.items() if vm.state in states}
        version = self.vms_version()
        before = watched_at.get(since) if since is not None else None
        watched_at[version] = now
        reads.append("whole" if before is None else "changes")
        if before is None:
            return WatchChanges(version, True, list(now.values()), [])
        changed = [vm for n, vm in now.items() if before.get(n) != vm]
        return WatchChanges(version, False, changed, [n for n in before if n not in now])


class FakeStore(Failing, ChangesByComparison):
    """PostgreSQL as a dict. ``down()`` makes every call raise StoreUnavailable."""

    def __init__(self) -> None:
        super().__init__()
        self.vms: dict[str, VmRecord] = {}
        self.logged: list[tuple[str | None, str | None, str, str, dict[str, Any]]] = []
        self.tokens_: dict[str, str] = {}
        self.is_down = False
        self._lock = threading.Lock()
        self.held: dict[str, str] = {}  # VM name -> the operation holding its lock
        self.images: dict[tuple[str, str], ImageRecord] = {}  # (name, location) -> record
        self.open_streams = 0  # list_json iterators neither exhausted nor closed
        self.held_keys: set[tuple[str, str]] = set()  # idempotency keys held: (scope, key)
        self._key_freed = threading.Condition()
        self.kept: dict[tuple[str, str], tuple[KeptAnswer, float]] = {}  # -> (answer, expiry)
        self.clock = 0.0  # s, for the kept answers' expiry

    @contextmanager
    def vm_lock(self, name: str, operation: str, timeout: float) -> Iterator[None]:
        self._call("vm_lock")
        with self._lock:
            if name in self.held:
                raise Busy(f"{name} is busy: another operation ({self.held[name]}) holds it")
            self.held[name] = operation
        try:
            yield
        finally:
            with self._lock:
                del self.held[name]

    def installation_id(self) -> str:
        return "00000000-0000-4000-8000-000000000001"

    def resize(
        self,
        name: str,
        cpu: int,
        ram_mb: int,
        disk_gb: int,
        check: Callable[[list[NodeUsage]], None],
    ) -> VmRecord:
        self._call("resize")
        check(self.usage())
        self.vms[name] = replace(self.get(name), cpu=cpu, ram_mb=ram_mb, disk_gb=disk_gb)
        return self.vms[name]

    def begin_move(
        self,
        name: str,
        node: str,
        check: Callable[[list[NodeUsage]], None],
        pool: AddressPool | None,
    ) -> VmRecord:
        self._call("begin_move")
        check(self.usage())
        ip = None if pool is None else str(pool.first + 50)
        self.vms[name] = replace(
            self.get(name), move_node=node, move_ip_pool=pool and pool.key, move_ip=ip
        )
        return self.vms[name]

    def end_move(self, name: str, done: bool) -> VmRecord:
        self._call("end_move")
        vm = self.get(name)
        if done and vm.move_node:
            vm = replace(
                vm,
                node=vm.move_node,
                ip_pool=vm.move_ip_pool,
                reserved_ip=vm.move_ip,
                ip=vm.move_ip,
                ip_state="expected" if vm.move_ip else None,
            )
        self.vms[name] = replace(vm, move_node=None, move_ip_pool=None, move_ip=None)
        return self.vms[name]

    def down(self) -> None:
        self.is_down = True

    def _call(self, what: str) -> None:
        if self.is_down:
            raise StoreUnavailable("PostgreSQL at db:5432 is unreachable: Connection refused")
        super()._call(what)

    def claim(
        self,
        vm: NewVm,
        choose: Callable[[list[NodeUsage]], str],
        host_key: str | None = None,
        pool_of: Callable[[str], AddressPool | None] = lambda _n: None,
    ) -> VmRecord:
        self._call("claim")
        with self._lock:
            if vm.name in self.vms:
                raise Conflict(f"a VM named {vm.name} exists already")
            node = choose(self.usage())
            fields = {k: v for k, v in asdict(vm).items() if k != "phone_home_hash"}
            record = VmRecord(
                id=len(self.vms) + 1,
                node=node,
                state="creating",
                host_key=host_key,
                ip=None,
                ip_state=None,
                created_at=NOW,
                updated_at=NOW,
                phone_home_hash=vm.phone_home_hash,
                **fields,
            )
            self.vms[vm.name] = record
            return record

    def get(self, name: str) -> VmRecord:
        self._call("get")
        if name not in self.vms:
            raise NotFound(f"no VM named {name}")
        return self.vms[name]

    def list(
        self,
        node: str | None = None,
        state: str | None = None,
        project: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[VmRecord]:
        self._call("list")
        found = [
            vm
            for vm in sorted(self.vms.values(), key=lambda v: v.name)
            if node in (None, vm.node)
            and state in (None, vm.state)
            and project in (None, vm.project)
            and (after is None or vm.name > after)
        ]
        return found if limit is None else found[:limit]

    def count(
        self, node: str | None = None, state: str | None = None, project: str | None = None
    ) -> int:
        self._call("count")
        return len(self.list(node, state, project))

    def vms_version(self) -> int:
        self._call("vms_version")
        return super().vms_version()

    def watch_changes(self, since: int | None, states: Sequence[str]) -> WatchChanges:
        self._call("watch_changes")
        return super().watch_changes(since, states)

    def list_json(
        self,
        node: str | None = None,
        state: str | None = None,
        project: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Iterator[str]:
        """Each VM's element of `vmctl list -o json`, as emit writes it (PgStore's SQL makes the
        same text: tests/integration/test_list_scale.py compares them), one at a time as a
        stream gives them; ``open_streams`` counts those not yet exhausted or closed."""
        import json
        import textwrap

        from vmctl.cli.output import _plain, record

        self._call("list_json")
        self.open_streams += 1
        try:
            for vm in self.list(node, state, project, limit, after):
                yield textwrap.indent(json.dumps(_plain(record(vm)), indent=2), "  ")
        finally:
            self.open_streams -= 1

    def list_contract_page(
        self,
        project: str,
        node: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> tuple[str, int, str | None]:
        """The HTTP API's list (what vm_out makes of each record), how many, the last name."""
        import json

        from vmctl.api.models import vm_out

        self._call("list_contract_page")
        page = self.list(node, state, project, limit, after)
        return json.dumps([vm_out(vm) for vm in page]), len(page), page[-1].name if page else None

    def set_state(self, name: str, state: str) -> VmRecord:
        self._call(f"set_state:{state}")
        self.vms[name] = replace(self.get(name), state=state)
        return self.vms[name]

    def delete(self, name: str) -> bool:
        self._call("delete")
        return self.vms.pop(name, None) is not None

    def usage(self) -> list[NodeUsage]:
        per: dict[str, list[VmRecord]] = {}
        for vm in self.vms.values():
            per.setdefault(vm.node, []).append(vm)
        return [
            NodeUsage(
                node,
                sum(v.cpu for v in vms),
                sum(v.ram_mb for v in vms),
                sum(v.disk_gb + v.root_gb for v in vms),
                frozenset(v.group_name for v in vms if v.group_name),
                len(vms),
            )
            for node, vms in sorted(per.items())
        ]

    def record_ip(self, name: str, mac: str, ip: str, source: str) -> IpChange | None:
        self._call("record_ip")
        vm = self.vms.get(name)
        if vm is None or vm.mac != mac or (vm.ip == ip and vm.ip_state == "confirmed"):
            return None
        self.vms[name] = replace(vm, ip=ip, ip_state="confirmed")
        return IpChange(name, vm.node, ip, vm.ip, vm.ip_state, source, NOW)

    def record_phone_home(self, name: str, secret_hash: str, ip: str) -> IpChange | None:
        raise NotImplementedError

    def add_event(
        self, vm: str | None, node: str | None, action: str, result: str, detail: dict[str, Any]
    ) -> int:
        self._call(f"add_event:{result}")
        if result not in RESULTS:  # as the real store (and the events table's CHECK)
            raise ValueError(f"unknown event result {result!r}")
        self.logged.append((vm, node, action, result, detail))
        return len(self.logged)

    def events_of(self, vm: str) -> list[tuple[str, str]]:
        return [(action, result) for name, _n, action, result, _d in self.logged if name == vm]

    def events(  # type: ignore[override]
        self, vm: str | None = None, since: datetime | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        return [
            {"vm": name, "action": a, "result": r, "detail": d}
            for name, _n, a, r, d in self.logged
            if vm in (None, name)
        ][-(limit or len(self.logged)) :]

    def create_token(self, project: str, token_hash: str, name: str = "") -> int:
        self.tokens_[token_hash] = project
        return len(self.tokens_)

    def token_project(self, token_hash: str) -> str | None:
        return self.tokens_.get(token_hash)

    def tokens(self) -> list[dict[str, Any]]:
        return [{"project": p} for p in self.tokens_.values()]

    def revoke_token(self, token_id: int) -> None:
        raise NotFound(f"no API token with id {token_id}")

    def heartbeat(self, process: str, kind: str, detail: dict[str, Any]) -> None:
        pass

    def forget_heartbeat(self, process: str) -> None:
        pass

    def alive(self, kind: str, within_s: float) -> list[str]:
        self._call("alive")
        return []

    # -- base images ---------------------------------------------------------------------------

    def record_image(self, name: str, location: str, sha256: str, size_bytes: int) -> ImageRecord:
        self._call("record_image")
        record = ImageRecord(name, location, sha256, size_bytes, NOW, "test@test")
        self.images[(name, location)] = record
        return record

    def image_records(self) -> list[ImageRecord]:
        self._call("image_records")
        return [self.images[key] for key in sorted(self.images)]

    def forget_image(self, name: str, location: str) -> bool:
        self._call("forget_image")
        return self.images.pop((name, location), None) is not None

    # -- idempotency keys: held like PostgreSQL's advisory locks, kept answers by a fake clock --

    @contextmanager
    def idempotency_hold(self, scope: str, key: str, timeout: float) -> Iterator[None]:
        self._call("idempotency_hold")
        with self._key_freed:
            if not self._key_freed.wait_for(lambda: (scope, key) not in self.held_keys, timeout):
                raise Busy(f"Idempotency-Key {key!r}: the first request is still running")
            self.held_keys.add((scope, key))
        try:
            yield
        finally:
            with self._key_freed:
                self.held_keys.discard((scope, key))
                self._key_freed.notify_all()

    def kept_answer(self, scope: str, key: str) -> KeptAnswer | None:
        self._call("kept_answer")
        kept = self.kept.get((scope, key))
        return kept[0] if kept is not None and kept[1] > self.clock else None

    def keep_answer(self, scope: str, key: str, answer: KeptAnswer, ttl_s: float) -> None:
        self._call("keep_answer")
        if self.kept_answer(scope, key) is None:
            self.kept[(scope, key)] = (answer, self.clock + ttl_s)

    def ping(self) -> None:
        self._call("ping")


class FakeCache(Failing):
    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, str] = {}
        self.published: list[dict[str, Any]] = []

    def get_node(self, name: str) -> str | None:
        return self.nodes.get(name)

    def set_node(self, name: str, node: str) -> None:
        self._call("set_node")
        self.nodes[name] = node

    def forget(self, name: str) -> None:
        self._call("forget")
        self.nodes.pop(name, None)

    def keys(self) -> list[str]:
        return [f"vmctl:vm:{name}:node" for name in self.nodes]

    def publish_ip(self, message: dict[str, Any]) -> None:
        self.published.append(message)

    def subscribe_ip(self) -> Subscription | None:
        return None


class UnusedHypervisor:
    """The Hypervisor port with every method refusing: fakes override what their test uses."""

    def create(
        self,
        spec: GuestSpec,
        disks: Disks,
        seed_files: dict[str, str],
        start: bool = True,
        reservation: Reservation | None = None,
    ) -> None:
        raise NotImplementedError

    def delete(
        self,
        name: str,
        storage_dir: str,
        network: str | None = None,
        mac: str | None = None,
        installation: str | None = None,
    ) -> None:
        raise NotImplementedError

    def state(self, name: str) -> str | None:
        raise NotImplementedError

    def start(self, name: str) -> None:
        raise NotImplementedError

    def shutdown(self, name: str) -> None:
        raise NotImplementedError

    def destroy(self, name: str) -> None:
        raise NotImplementedError

    def reboot(self, name: str, force: bool = False) -> None:
        raise NotImplementedError

    def set_resources(self, name: str, cpu: int, ram_mb: int) -> None:
        raise NotImplementedError

    def space(self) -> PoolSpace | None:
        self._call("space")
        return self.storage.space(None)

    def grow_disk(self, name: str, data_gb: int) -> None:
        raise NotImplementedError

    def observe(self, network: str, timeout: float = 15.0) -> Observation:
        raise NotImplementedError

    def follow_leases(
        self, network: str, on_leases: Callable[[list[Lease]], None], stop: threading.Event
    ) -> None:
        raise NotImplementedError

    def domains(self) -> list[str]:
        raise NotImplementedError

    def addresses(
        self, name: str, source: str = "lease", timeout_s: int | None = None
    ) -> list[tuple[str, str]]:
        raise NotImplementedError

    def console_log(self, name: str, max_bytes: int = 1 << 20) -> str:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class FakeStorage:
    """Storage as the services see it: node-local unless ``shared`` names a pool."""

    kind = "dir"

    def __init__(self, local_dir: str = "/srv/vms", shared: str | None = None) -> None:
        self.local_dir = local_dir
        self.shared = shared
        self.kind = "rbd" if shared else "dir"
        self.space_bytes: tuple[int, int] | None = None  # (free, stored) when shared

    def describe(self) -> str:
        return f"rbd pool {self.shared}" if self.shared else f"dir {self.local_dir}"

    def space(self, runner: Any) -> PoolSpace | None:
        if not self.shared or self.space_bytes is None:
            return None
        free, stored = self.space_bytes
        return PoolSpace(self.shared, self.describe(), free, stored, 1.0)


class FakeHypervisor(Failing, UnusedHypervisor):
    """A node's libvirt as a set of domain names and their states."""

    def __init__(self, node: str, observation: Observation | None = None) -> None:
        super().__init__()
        self.node = node
        self.storage = FakeStorage()
        self.kept_disks: list[str] = []  # VMs deleted with keep_disks (moved away)
        self.defined: set[str] = set()
        self.states: dict[str, str] = {}
        self.sizes: dict[str, tuple[int, int]] = {}  # name -> (cpu, ram_mb) set by resize
        self.disks: dict[str, int] = {}  # name -> data disk GiB grown to
        self.ignores_shutdown: set[str] = set()  # guests that do not act on ACPI
        self.observation = observation or Observation()
        self.closed = 0

    def state(self, name: str) -> str | None:
        self._call("state")
        return self.states.get(name, "running") if name in self.defined else None

    def start(self, name: str) -> None:
        self._call("start")
        self.states[name] = "running"

    def shutdown(self, name: str) -> None:
        self._call("shutdown")
        if name not in self.ignores_shutdown:
            self.states[name] = "shut off"

    def destroy(self, name: str) -> None:
        self._call("destroy")
        self.states[name] = "shut off"

    def reboot(self, name: str, force: bool = False) -> None:
        self._call("reset" if force else "reboot")

    def set_resources(self, name: str, cpu: int, ram_mb: int) -> None:
        self._call("set_resources")
        self.sizes[name] = (cpu, ram_mb)

    def space(self) -> PoolSpace | None:
        self._call("space")
        return self.storage.space(None)

    def grow_disk(self, name: str, data_gb: int) -> None:
        self._call("grow_disk")
        self.disks[name] = data_gb

    def create(
        self,
        spec: GuestSpec,
        disks: Disks,
        seed_files: dict[str, str],
        start: bool = True,
        reservation: Reservation | None = None,
        adopt: bool = False,
    ) -> None:
        self._call("adopt" if adopt else "create")
        self.defined.add(spec.name)
        if adopt or not start:
            self.states[spec.name] = "shut off"

    def delete(
        self,
        name: str,
        network: str | None = None,
        mac: str | None = None,
        installation: str | None = None,
        keep_disks: bool = False,
    ) -> None:
        self._call("delete")
        if keep_disks:
            self.kept_disks.append(name)
        self.defined.discard(name)  # delete-vm.sh: no such domain is not an error

    def observe(self, network: str, timeout: float = 15.0) -> Observation:
        self._call("observe")
        return self.observation

    def domains(self) -> list[str]:
        return sorted(self.defined)

    def addresses(
        self, name: str, source: str = "lease", timeout_s: int | None = None
    ) -> list[tuple[str, str]]:
        return []

    def console_log(self, name: str, max_bytes: int = 1 << 20) -> str:
        return "debian login: " if name in self.defined else ""

    def close(self) -> None:
        self.closed += 1


@dataclass
class FakeProbe:
    keys: dict[str, str] = field(default_factory=dict)  # ip -> "TYPE BASE64"
    init: CloudInit | None = field(default_factory=lambda: CloudInit("done", "status: done"))

    def host_key(self, ip: str, port: int = 22, timeout: float = 5.0) -> str | None:
        return self.keys.get(ip)

    def cloud_init(
        self, ip: str, user: str, key_file: Path, host_key: str, timeout: float
    ) -> CloudInit | None:
        return self.init


@dataclass
class World:
    """A VmService over fakes, and the fakes to look at."""

    svc: VmService
    store: FakeStore
    cache: FakeCache
    nodes: dict[str, FakeHypervisor]
    probe: FakeProbe
    told: list[str]


def world(unreachable: set[str] | None = None) -> World:
    from vmctl.core.errors import NodeUnreachable

    store, cache, probe, told = FakeStore(), FakeCache(), FakeProbe(), []
    nodes = {name: FakeHypervisor(name) for name in ("kvm1", "kvm2")}

    def connect(node: Any) -> FakeHypervisor:
        if node.name in (unreachable or set()):
            raise NodeUnreachable(f"node {node.name} (127.0.0.1:22): Connection refused")
        return nodes[node.name]

    svc = VmService(
        inventory=Inventory.model_validate(INVENTORY),
        store=store,
        cache=cache,
        connect=connect,
        probe=probe,
        progress=told.append,
        actor="test@test",
        guest_key=Path("/nonexistent/id_ed25519"),
        default_keys=[KEY],
    )
    return World(svc, store, cache, nodes, probe, told)
