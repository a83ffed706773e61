"""Create, delete, list and show VMs: the orchestration behind the CLI and the HTTP API.

Everything outside (node hypervisors, PostgreSQL, Redis) is passed in. Input is checked before
anything is touched; once a node has been touched, any failure removes what was made (domain,
disks, seed, row, cache key) and records an event with the cause.
"""

from __future__ import annotations

import getpass
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vmctl import cloudinit, hostkeys, placement, readiness, tokens, validation, watcher
from vmctl.addressing import SOURCES
from vmctl.cache import Cache
from vmctl.domainxml import GuestSpec
from vmctl.errors import (
    ConfigError,
    Conflict,
    GuestFailed,
    InvalidInput,
    NotFound,
    Timeout,
    VmctlError,
)
from vmctl.hypervisor import Disks, Hypervisor, Reservation
from vmctl.inventory import Inventory, Node
from vmctl.store import NewVm, NodeUsage, Store, VmRecord

WATCHER_ALIVE_S = 15.0  # a watch-ip whose heartbeat is older than this is taken to be gone

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CreateRequest:
    name: str
    ram_mb: object
    cpu: object
    disk_gb: object
    image: str | None = None
    node: str | None = None
    group: str | None = None
    policy: str = "spread"
    authorized_keys: Sequence[str] = ()
    user_data: str | None = None
    project: str | None = None


@dataclass
class VmService:
    inventory: Inventory
    store: Store
    cache: Cache
    connect: Callable[[Node], Hypervisor]
    progress: Progress = lambda _msg: None
    actor: str = field(default_factory=lambda: f"{getpass.getuser()}@{socket.gethostname()}")
    guest_key: Path | None = None  # private key that logs into guests (asks cloud-init)
    sources: Sequence[str] = SOURCES  # how to learn addresses when no watcher runs
    phone_home_base: str | None = None  # the internal API's URL guests call home to, if any
    default_keys: Sequence[str] = ()  # public keys for guests made without any (the API)

    # -- reading -----------------------------------------------------------------------------

    def get(self, name: str) -> VmRecord:
        return self.store.get(validation.name(name))

    def list_vms(
        self, node: str | None = None, state: str | None = None, project: str | None = None
    ) -> list[VmRecord]:
        if node is not None:
            self.inventory.node(node)  # NotFound for an unknown node
        return self.store.list(node=node, state=state, project=project)

    def node_of(self, name: str) -> str:
        """Which node holds a VM: the Redis cache first, PostgreSQL when it misses."""
        cached = self.cache.get_node(name)
        if cached is not None:
            return cached
        node = self.store.get(name).node
        self.cache.set_node(name, node)
        return node

    def nodes(self) -> list[dict[str, Any]]:
        usage = {u.node: u for u in self.store.usage()}
        rows = []
        for load in self._loads(list(usage.values())):
            free = placement.free(load)
            rows.append(
                {
                    "name": load.name,
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

    # -- create ------------------------------------------------------------------------------

    def check(self, req: CreateRequest) -> NewVm:
        """Everything that can be refused before anything is touched (exit 2 in the CLI)."""
        name = validation.name(req.name)
        ram = validation.integer("ram", req.ram_mb)
        cpu = validation.integer("cpu", req.cpu)
        disk = validation.integer("disk", req.disk_gb)
        image_name = req.image or self.inventory.defaults.image
        try:
            self.inventory.image(image_name)
        except NotFound as exc:
            raise InvalidInput("image", str(exc)) from exc
        if req.node is not None:
            try:
                self.inventory.node(req.node)
            except NotFound as exc:
                raise InvalidInput("node", str(exc)) from exc
        if req.group is not None:
            validation.name(req.group, "group")
        if req.project is not None:
            validation.name(req.project, "project")
        if req.policy not in ("spread", "pack"):
            raise InvalidInput("policy", f"must be 'spread' or 'pack', not {req.policy!r}")
        validation.public_keys(req.authorized_keys)
        try:
            existing = self.store.get(name)
        except NotFound:
            pass
        else:
            raise Conflict(f"name: a VM named {name} exists already (on node {existing.node})")
        return NewVm(
            name=name,
            ram_mb=ram,
            cpu=cpu,
            disk_gb=disk,
            root_gb=self.inventory.defaults.root_gb,
            image=image_name,
            mac=hostkeys.new_mac(),
            group_name=req.group,
            project=req.project,
        )

    def create(self, req: CreateRequest) -> VmRecord:
        new = self.check(req)
        phone_home_url = None
        if self.phone_home_base:
            secret, secret_hash = tokens.new_secret()
            new = replace(new, phone_home_hash=secret_hash)
            phone_home_url = (
                f"{self.phone_home_base.rstrip('/')}/api/v1/phone-home/{new.name}?secret={secret}"
            )
        host_key = hostkeys.new_host_key(new.name)
        need = placement.Resources(new.cpu, new.ram_mb, new.disk_gb + new.root_gb)
        want = placement.Request(new.name, need, node=req.node, group=req.group, policy=req.policy)  # type: ignore[arg-type]
        record = self.store.claim(
            new,
            lambda usages: placement.place(want, self._loads(usages)),
            host_key=host_key.public,
            pool_of=lambda node: self.inventory.node(node).network.pool(),
        )
        address = f", address {record.reserved_ip} reserved" if record.reserved_ip else ""
        self.progress(f"{new.name}: placed on {record.node}{address}")
        self.store.add_event(
            new.name,
            record.node,
            "create",
            "started",
            {
                "actor": self.actor,
                "ram_mb": new.ram_mb,
                "cpu": new.cpu,
                "disk_gb": new.disk_gb,
                "image": new.image,
            },
        )
        node = self.inventory.node(record.node)
        reservation = None
        if record.reserved_ip is not None:
            reservation = Reservation(node.network.name, record.mac, record.reserved_ip)
        hv: Hypervisor | None = None
        try:
            hv = self.connect(node)
            self._build(hv, node, new, host_key, req, reservation, phone_home_url)
            self.store.set_state(new.name, "running")
            self.cache.set_node(new.name, node.name)
        except BaseException as exc:
            self._rollback(record, node, hv, exc)
            raise
        self.store.add_event(new.name, node.name, "create", "ok", {"actor": self.actor})
        return self.store.get(new.name)

    def _build(
        self,
        hv: Hypervisor,
        node: Node,
        new: NewVm,
        host_key: cloudinit.HostKey,
        req: CreateRequest,
        reservation: Reservation | None,
        phone_home_url: str | None = None,
    ) -> None:
        image = self.inventory.image(new.image)
        seed = cloudinit.Seed(
            hostname=new.name,
            instance_id=f"{new.name}-{uuid.uuid4().hex[:12]}",
            user=image.default_user,
            ssh_authorized_keys=list(req.authorized_keys),
            mac=new.mac,
            host_key=host_key,
            phone_home_url=phone_home_url,
        )
        files = cloudinit.render(seed, extra_user_data=req.user_data)
        spec = GuestSpec(
            name=new.name,
            ram_mb=new.ram_mb,
            cpu=new.cpu,
            storage_dir=node.storage.directory,
            network=node.network.name,
            mac=new.mac,
            image=new.image,
            virt_type=node.virt_type,
            kernel=image.kernel if image.boot == "kernel" else None,
            initrd=image.initrd if image.boot == "kernel" else None,
            cmdline=image.cmdline if image.boot == "kernel" else None,
        )
        self.progress(f"{new.name}: creating disks and seed, starting the domain on {node.name}")
        disks = Disks(image.path, new.root_gb, new.disk_gb)
        hv.create(spec, disks, files, reservation=reservation)

    def _rollback(
        self, record: VmRecord, node: Node, hv: Hypervisor | None, cause: BaseException
    ) -> None:
        """Remove what a failed create made. Every step runs, whatever the others do."""
        name = record.name
        self.progress(f"{name}: failed ({cause}); removing what was made")
        steps: list[tuple[str, Callable[[], object]]] = [
            ("cache", lambda: self.cache.forget(name)),
            ("database row", lambda: self.store.delete(name)),
        ]
        if hv is not None:
            steps.insert(0, ("node", lambda: self._remove_from_node(hv, node, record)))
        problems = []
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                problems.append(f"{what}: {exc}")
                self.progress(f"{name}: could not clean up the {what}: {exc}")
        self.store.add_event(
            name,
            node.name,
            "create",
            "failed",
            {
                "actor": self.actor,
                "cause": str(cause) or type(cause).__name__,
                "cleanup_problems": problems,
            },
        )

    # -- wait --------------------------------------------------------------------------------

    def wait(self, name: str, timeout: float, until: str = "cloud-init") -> VmRecord:
        """Until the VM is ready, step by step (readiness.STEPS, up to ``until``): its address
        confirmed, SSH answering with its host key, cloud-init finished. Timeout names the step
        it was stuck at and where to look."""
        readiness.check_step(until)
        deadline = time.monotonic() + timeout
        record = self.get(name)
        node = self.inventory.node(record.node)
        console = f"{node.storage.directory}/{name}/console.log"
        look = None
        if not self.store.alive(watcher.KIND, WATCHER_ALIVE_S):
            self.progress(f"{name}: no `vmctl watch-ip` is running; looking for the address itself")
            look = self._look_for(record, node)
        self.progress(f"{name}: waiting for {until} (timeout {timeout:.0f} s)")
        vm = readiness.wait_for_address(
            self.store, self.cache, name, deadline, look, progress=self.progress
        )
        if vm is None:
            what = (
                f"its reserved address {record.reserved_ip} was not seen on the node"
                if record.reserved_ip
                else f"no DHCP lease, ARP entry or agent report for MAC {record.mac}"
            )
            raise Timeout(readiness.stuck(name, "ip", timeout, node.name, console, what))
        self.progress(f"{name}: address {vm.ip}")
        if until == "ip":
            return vm
        assert vm.ip is not None
        if not readiness.wait_for_ssh(vm.ip, vm.host_key or "", deadline):
            what = f"SSH at {vm.ip} did not answer with the VM's host key"
            raise Timeout(readiness.stuck(name, "ssh", timeout, node.name, console, what))
        self.progress(f"{name}: SSH answers")
        if until == "ssh":
            return vm
        if self.guest_key is None:
            raise ConfigError("no SSH key to log into guests with (ssh_key): use --wait-for ssh")
        user = self.inventory.image(vm.image).default_user
        result = readiness.wait_for_cloud_init(
            vm.ip, user, self.guest_key, vm.host_key or "", deadline
        )
        if result is None:
            what = "cloud-init did not report that it had finished"
            raise Timeout(readiness.stuck(name, "cloud-init", timeout, node.name, console, what))
        if result.status == "error":
            raise GuestFailed(
                f"{name}: cloud-init finished with errors ({_last_line(result.detail)}); "
                f"see /var/log/cloud-init.log in the VM (vmctl ssh {name})"
            )
        if result.status == "degraded":
            self.progress(f"{name}: cloud-init finished with recoverable errors")
        self.progress(f"{name}: cloud-init finished")
        return self.store.get(name)

    def _look_for(self, vm: VmRecord, node: Node) -> Callable[[], None]:
        """One look at the node for the VM's address (at most once a second), for waiting when
        no watcher runs."""
        hv = self.connect(node)
        last = [0.0]

        def look() -> None:
            if time.monotonic() - last[0] < 1.0:
                return
            last[0] = time.monotonic()
            age = (datetime.now(UTC) - vm.created_at).total_seconds()
            try:
                found = watcher.discover(
                    hv, node.network.name, [vm], self.sources, lambda _vm: age > 30
                )
                for f in found:
                    watcher.record(self.store, self.cache, f)
            except VmctlError as exc:
                self.progress(f"{vm.name}: {exc}")

        return look

    # -- delete ------------------------------------------------------------------------------

    def delete(self, name: str) -> None:
        record = self.get(name)
        node = self.inventory.node(self.node_of(record.name))
        self.store.set_state(name, "deleting")
        try:
            self._remove_from_node(self.connect(node), node, record)
        except VmctlError as exc:
            self.store.set_state(name, "error")
            self.store.add_event(
                name, node.name, "delete", "failed", {"actor": self.actor, "cause": str(exc)}
            )
            raise
        self.cache.forget(name)
        self.store.delete(name)
        self.store.add_event(name, node.name, "delete", "ok", {"actor": self.actor})

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _remove_from_node(hv: Hypervisor, node: Node, vm: VmRecord) -> None:
        """Domain, disks, seed and (managed networks) the DHCP reservation."""
        if vm.reserved_ip is not None:
            hv.delete(vm.name, node.storage.directory, node.network.name, vm.mac)
        else:
            hv.delete(vm.name, node.storage.directory)

    def _loads(self, usages: Sequence[NodeUsage]) -> list[placement.NodeLoad]:
        used = {u.node: u for u in usages}
        loads = []
        for node in self.inventory.nodes:
            u = used.get(node.name)
            loads.append(
                placement.NodeLoad(
                    name=node.name,
                    capacity=placement.Resources(
                        node.capacity.cpu, node.capacity.ram_mb, node.capacity.disk_gb
                    ),
                    overcommit_cpu=node.overcommit.cpu,
                    overcommit_ram=node.overcommit.ram,
                    overcommit_disk=node.overcommit.disk,
                    used=placement.Resources(u.cpu, u.ram_mb, u.disk_gb)
                    if u
                    else placement.Resources(0, 0, 0),
                    groups=u.groups if u else frozenset(),
                )
            )
        return loads


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no details"
