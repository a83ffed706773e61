"""Create, delete, list and show VMs: the orchestration behind the CLI and the HTTP API.

Everything outside (node hypervisors, PostgreSQL, Redis) is passed in. Input is checked before
anything is touched; once a node has been touched, any failure removes what was made (domain,
disks, seed, row, cache key) and records an event with the cause.
"""

from __future__ import annotations

import getpass
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmctl import cloudinit, hostkeys, placement, readiness, validation
from vmctl.cache import Cache
from vmctl.domainxml import GuestSpec
from vmctl.errors import Conflict, InvalidInput, NotFound, VmctlError
from vmctl.hypervisor import Disks, Hypervisor
from vmctl.inventory import Inventory, Node
from vmctl.store import NewVm, NodeUsage, Store, VmRecord

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

    # -- reading -----------------------------------------------------------------------------

    def get(self, name: str) -> VmRecord:
        return self.store.get(validation.name(name))

    def list_vms(self, node: str | None = None, state: str | None = None) -> list[VmRecord]:
        if node is not None:
            self.inventory.node(node)  # NotFound for an unknown node
        return self.store.list(node=node, state=state)

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
        if req.policy not in ("spread", "pack"):
            raise InvalidInput("policy", f"must be 'spread' or 'pack', not {req.policy!r}")
        if not req.authorized_keys:
            raise InvalidInput("ssh-key", "no public key to put into the VM")
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
        host_key = hostkeys.new_host_key(new.name)
        need = placement.Resources(new.cpu, new.ram_mb, new.disk_gb + new.root_gb)
        want = placement.Request(new.name, need, node=req.node, group=req.group, policy=req.policy)  # type: ignore[arg-type]
        record = self.store.claim(
            new,
            lambda usages: placement.place(want, self._loads(usages)),
            host_key=host_key.public,
        )
        self.progress(f"{new.name}: placed on {record.node}")
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
        hv: Hypervisor | None = None
        try:
            hv = self.connect(node)
            self._build(hv, node, new, host_key, req)
            self.store.set_state(new.name, "running")
            self.cache.set_node(new.name, node.name)
        except BaseException as exc:
            self._rollback(new.name, node, hv, exc)
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
    ) -> None:
        image = self.inventory.image(new.image)
        seed = cloudinit.Seed(
            hostname=new.name,
            instance_id=f"{new.name}-{uuid.uuid4().hex[:12]}",
            user=image.default_user,
            ssh_authorized_keys=list(req.authorized_keys),
            mac=new.mac,
            host_key=host_key,
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
        hv.create(spec, Disks(image.path, new.root_gb, new.disk_gb), files)

    def _rollback(self, name: str, node: Node, hv: Hypervisor | None, cause: BaseException) -> None:
        """Remove what a failed create made. Every step runs, whatever the others do."""
        self.progress(f"{name}: failed ({cause}); removing what was made")
        steps: list[tuple[str, Callable[[], object]]] = [
            ("cache", lambda: self.cache.forget(name)),
            ("database row", lambda: self.store.delete(name)),
        ]
        if hv is not None:
            steps.insert(0, ("node", lambda: hv.delete(name, node.storage.directory)))
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

    def wait(self, name: str, timeout: float) -> VmRecord:
        """Until the VM has an IP (recorded in PostgreSQL) and SSH answers with its host key."""
        record = self.get(name)
        node = self.inventory.node(record.node)
        hv = self.connect(node)
        self.progress(f"{name}: waiting for its address and SSH (timeout {timeout:.0f} s)")

        def on_ip(ip: str) -> None:
            self.store.set_ip(name, ip, "confirmed")
            self.progress(f"{name}: {ip}")

        readiness.wait_ready(
            hv,
            name,
            record.mac,
            record.host_key or "",
            timeout,
            on_ip,
            f"{node.storage.directory}/{name}/console.log",
        )
        return self.store.get(name)

    # -- delete ------------------------------------------------------------------------------

    def delete(self, name: str) -> None:
        record = self.get(name)
        node = self.inventory.node(self.node_of(record.name))
        self.store.set_state(name, "deleting")
        try:
            self.connect(node).delete(name, node.storage.directory)
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
