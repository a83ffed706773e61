"""Creating a VM: check, claim room, build it on the node, and on any failure remove every part
that was made (domain, disks, seed, DHCP reservation, row, cache key) with an event naming the
cause."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, cast

from vmctl.core import cloudinit, hostkeys, placement, tokens, validation
from vmctl.core.domainxml import GuestSpec
from vmctl.core.errors import Conflict, InvalidInput, NotFound, Unavailable
from vmctl.core.nodecmd import Disks, Reservation
from vmctl.core.records import Mark, NewVm, VmRecord
from vmctl.core.requests import CreateRequest
from vmctl.services.ports import Hypervisor

if TYPE_CHECKING:
    from vmctl.core.inventory import Node
    from vmctl.services.vms import VmService


def check(svc: VmService, req: CreateRequest) -> NewVm:
    """The request with defaults filled in, every value checked, and the name free; InvalidInput
    or Conflict otherwise. Touches nothing."""
    defaults = svc.inventory.defaults
    name = validation.name(req.name)
    ram = validation.integer("ram", defaults.ram_mb if req.ram_mb is None else req.ram_mb)
    cpu = validation.integer("cpu", defaults.cpu if req.cpu is None else req.cpu)
    disk = validation.integer("disk", defaults.disk_gb if req.disk_gb is None else req.disk_gb)
    image_name = req.image or defaults.image
    _known("image", lambda: svc.inventory.image(image_name))
    if req.node is not None:
        _known("node", lambda: svc.inventory.node(req.node or ""))
    if req.group is not None:
        validation.name(req.group, "group")
    if req.project is not None:
        validation.name(req.project, "project")
    validation.policy(req.policy)
    validation.public_keys(authorized_keys(svc, req))
    try:
        existing = svc.store.get(name)
    except NotFound:
        pass
    else:
        raise Conflict(f"name: a VM named {name} exists already (on node {existing.node})")
    return NewVm(
        name=name,
        ram_mb=ram,
        cpu=cpu,
        disk_gb=disk,
        root_gb=defaults.root_gb,
        image=image_name,
        mac=hostkeys.new_mac(),
        group_name=req.group,
        project=req.project,
    )


def _known(field: str, look_up: Callable[[], object]) -> None:
    try:
        look_up()
    except NotFound as exc:
        raise InvalidInput(field, str(exc)) from exc


def authorized_keys(svc: VmService, req: CreateRequest) -> list[str]:
    """The keys to put into the guest: the request's, else the service's defaults."""
    return list(req.authorized_keys if req.authorized_keys is not None else svc.default_keys)


def create(svc: VmService, req: CreateRequest) -> VmRecord:
    """Make the VM, holding its lock from before the claim to the end: a create that dies
    leaves a ``creating`` row that no one holds, which `vmctl reconcile` rolls back."""
    new = check(svc, req)
    with svc.locked(new.name, "create"):
        return _create(svc, req, new)


def create_job(svc: VmService, req: CreateRequest, mac: str) -> VmRecord:
    """The create of a durable job (vmctl.services.jobs), safe to run again after its worker
    died at any point: the job fixes the VM's MAC, so a row with that MAC that is ``running`` or
    ``stopped`` is the VM an earlier attempt made (returned as is). A ``creating`` row that no
    one holds (this attempt holds the VM's lock) is what a dead attempt left: it is rolled back
    by reconcile's rule for a stuck create (node, cache key, row), then the VM is made anew. So
    a retry finishes the job or fails it, and never leaves a half VM nor makes two."""
    name = validation.name(req.name)
    with svc.locked(name, "create"):
        try:
            row: VmRecord | None = svc.store.get(name)
        except NotFound:
            row = None
        if row is not None and row.mac == mac and row.state in ("running", "stopped"):
            svc.progress(f"{name}: made by an earlier attempt of this job")
            return row
        if row is not None and row.state == "creating":
            svc.progress(f"{name}: an earlier attempt died mid-way; rolling back what it left")
            hv = svc.connect(svc.inventory.node(row.node))
            problems = rollback(svc, row, hv, RuntimeError("its worker died mid-way (job retry)"))
            if problems:
                raise Unavailable(
                    f"{name}: could not roll back what an earlier attempt left "
                    f"({'; '.join(problems)}); `vmctl reconcile --fix` finishes it"
                )
        new = replace(check(svc, req), mac=mac)
        return _create(svc, req, new)


def _create(svc: VmService, req: CreateRequest, new: NewVm) -> VmRecord:
    started = time.monotonic()  # the events' "seconds": the cloud's create duration metrics
    phone_home_url = None
    if svc.phone_home_base:
        secret, secret_hash = tokens.new_secret()
        new = replace(new, phone_home_hash=secret_hash)
        base = svc.phone_home_base.rstrip("/")
        phone_home_url = f"{base}/api/v1/phone-home/{new.name}?secret={secret}"
    host_key = hostkeys.new_host_key(new.name)
    need = placement.Resources(new.cpu, new.ram_mb, new.disk_gb + new.root_gb)
    policy = cast(placement.Policy, req.policy)  # checked by check()
    want = placement.Request(new.name, need, node=req.node, group=req.group, policy=policy)
    candidates = [svc.inventory.node(req.node)] if req.node else None
    spaces = svc.pool_spaces(candidates)  # shared storage: its room, asked before the claim
    record = svc.store.claim(
        new,
        lambda usages: placement.place(want, svc.loads(usages, spaces)),
        host_key=host_key.public,
        pool_of=lambda node: svc.inventory.node(node).network.pool(),
    )
    # From here on the row holds capacity: whatever fails, the rollback gives it back.
    hv: Hypervisor | None = None
    try:
        address = f", address {record.reserved_ip} reserved" if record.reserved_ip else ""
        svc.progress(f"{new.name}: placed on {record.node}{address}")
        detail = {"ram_mb": new.ram_mb, "cpu": new.cpu, "disk_gb": new.disk_gb, "image": new.image}
        svc.store.add_event(
            new.name, record.node, "create", "started", {"actor": svc.actor, **detail}
        )
        node = svc.inventory.node(record.node)
        hv = svc.connect(node)
        mark = Mark(svc.store.installation_id(), record.id, new.name, socket.gethostname())
        with svc.node_slot(node.name):
            _build(svc, hv, node, new, host_key, req, record, phone_home_url, mark)
        svc.store.set_state(new.name, "running")
        svc.cache.set_node(new.name, node.name)
    except BaseException as exc:
        rollback(svc, record, hv, exc, started)
        raise
    done = {"actor": svc.actor, "seconds": elapsed(started)}
    svc.store.add_event(new.name, record.node, "create", "ok", done)
    return svc.store.get(new.name)


def _build(
    svc: VmService,
    hv: Hypervisor,
    node: Node,
    new: NewVm,
    host_key: cloudinit.HostKey,
    req: CreateRequest,
    record: VmRecord,
    phone_home_url: str | None,
    mark: Mark,
) -> None:
    image = svc.inventory.image(new.image)
    seed = cloudinit.Seed(
        hostname=new.name,
        instance_id=f"{new.name}-{uuid.uuid4().hex[:12]}",
        user=image.default_user,
        ssh_authorized_keys=authorized_keys(svc, req),
        mac=new.mac,
        host_key=host_key,
        phone_home_url=phone_home_url,
    )
    files = cloudinit.render(seed, extra_user_data=req.user_data)
    spec = guest_spec(svc, node, record, mark)
    reservation = None
    if record.reserved_ip is not None:
        reservation = Reservation(node.network.name, record.mac, record.reserved_ip)
    svc.progress(f"{new.name}: creating disks and seed, starting the domain on {node.name}")
    hv.create(spec, disks_of(svc, record), files, reservation=reservation)
    svc.progress(f"{new.name}: domain started on {node.name}")


def guest_spec(svc: VmService, node: Node, vm: VmRecord, mark: Mark) -> GuestSpec:
    """The domain of VM ``vm`` on ``node`` (its disks: where the node's storage keeps them)."""
    image = svc.inventory.image(vm.image)
    kernel_boot = image.boot == "kernel"
    return GuestSpec(
        name=vm.name,
        ram_mb=vm.ram_mb,
        cpu=vm.cpu,
        storage_dir=node.storage.directory,
        network=node.network.name,
        mac=vm.mac,
        image=vm.image,
        virt_type=node.virt_type,
        data_disk=vm.disk_gb > 0,
        kernel=image.kernel if kernel_boot else None,
        initrd=image.initrd if kernel_boot else None,
        cmdline=image.cmdline if kernel_boot else None,
        mark=mark,
    )


def disks_of(svc: VmService, vm: VmRecord) -> Disks:
    return Disks(svc.inventory.image(vm.image).path, vm.root_gb, vm.disk_gb)


def elapsed(started: float) -> float:
    """Seconds since ``started`` (time.monotonic()), to the millisecond."""
    return round(time.monotonic() - started, 3)


def rollback(
    svc: VmService,
    record: VmRecord,
    hv: Hypervisor | None,
    cause: BaseException,
    started: float | None = None,
) -> list[str]:
    """Remove what a failed create made. Every step runs, whatever the others do, and no step's
    failure (PostgreSQL down, say) hides ``cause``: the problems are reported and returned.

    When the node could not be cleaned (it stopped answering), the row stays, as ``deleting``:
    it keeps the capacity the leftovers take, and `vmctl watch-ip` (or `reconcile --fix`)
    removes them when the node answers again. Nothing is ever left recorded as running."""
    from vmctl.services.delete import remove_from_node

    name = record.name
    svc.progress(f"{name}: failed ({cause or type(cause).__name__}); removing what was made")
    problems = []

    def attempt(what: str, step: Callable[[], object]) -> bool:
        try:
            step()
        except Exception as exc:
            problems.append(f"{what}: {exc}")
            svc.progress(f"{name}: could not clean up the {what}: {exc}")
            return False
        return True

    node_clean = True
    if hv is not None:
        node = svc.inventory.node(record.node)
        node_clean = attempt(
            "node", lambda: remove_from_node(hv, node, record, svc.store.installation_id())
        )
    attempt("cache", lambda: svc.cache.forget(name))
    if node_clean:
        attempt("database row", lambda: svc.store.delete(name))
    elif attempt("database row", lambda: svc.store.set_state(name, "deleting")):
        svc.progress(f"{name}: recorded as deleting; the delete completes when the node answers")
    detail: dict[str, object] = {
        "actor": svc.actor,
        "cause": str(cause) or type(cause).__name__,
        "cleanup_problems": problems,
    }
    if started is not None:
        detail["seconds"] = elapsed(started)
    try:
        svc.store.add_event(name, record.node, "create", "failed", detail)
    except Exception as exc:
        svc.progress(f"{name}: could not record the failure in the event log: {exc}")
    return problems
