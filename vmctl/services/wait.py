"""`vmctl wait` / `create --wait`: until a VM is ready, step by step, or a Timeout that names the
step it was stuck at and where to look."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from vmctl.core import validation
from vmctl.core.errors import ConfigError, GuestFailed, Timeout, VmctlError
from vmctl.core.readiness import check_step, stuck
from vmctl.core.records import VmRecord
from vmctl.services import readiness
from vmctl.services.watcher import KIND, discover, record

if TYPE_CHECKING:
    from vmctl.core.inventory import Node
    from vmctl.services.vms import VmService

WATCHER_ALIVE_S = 15.0  # a watch-ip whose heartbeat is older than this is taken to be gone


def wait(svc: VmService, name: str, timeout: float, until: str = "cloud-init") -> VmRecord:
    """Its address confirmed, SSH answering with its host key, cloud-init finished (up to
    ``until``)."""
    check_step(until)
    validation.seconds("timeout", timeout)
    deadline = time.monotonic() + timeout
    record = svc.get(name)
    node = svc.inventory.node(record.node)
    console = f"{node.storage.directory}/{name}/console.log"  # node-local with every storage

    def timed_out(step: str, what: str) -> Timeout:
        return Timeout(stuck(name, step, timeout, node.name, console, what))

    look = None
    if not svc.store.alive(KIND, WATCHER_ALIVE_S):
        svc.progress(f"{name}: no `vmctl watch-ip` is running; looking for the address itself")
        look = _look_for(svc, record, node)
    svc.progress(f"{name}: waiting for {until} (timeout {timeout:.0f} s)")
    vm = readiness.wait_for_address(
        svc.store, svc.cache, name, deadline, look, progress=svc.progress
    )
    if vm is None or vm.ip is None:
        what = (
            f"its reserved address {record.reserved_ip} was not seen on the node"
            if record.reserved_ip
            else f"no DHCP lease, ARP entry or agent report for MAC {record.mac}"
        )
        raise timed_out("ip", what)
    svc.progress(f"{name}: address {vm.ip}")
    if until == "ip":
        return vm
    if not readiness.wait_for_ssh(svc.probe, vm.ip, vm.host_key or "", deadline):
        raise timed_out("ssh", f"SSH at {vm.ip} did not answer with the VM's host key")
    svc.progress(f"{name}: SSH answers")
    if until == "ssh":
        return vm
    _wait_for_cloud_init(svc, vm, deadline, timed_out)
    return svc.store.get(name)


def _wait_for_cloud_init(
    svc: VmService, vm: VmRecord, deadline: float, timed_out: Callable[[str, str], Timeout]
) -> None:
    if svc.guest_key is None:
        raise ConfigError("no SSH key to log into guests with (ssh_key): use --wait-for ssh")
    assert vm.ip is not None
    user = svc.inventory.image(vm.image).default_user
    result = readiness.wait_for_cloud_init(
        svc.probe, vm.ip, user, svc.guest_key, vm.host_key or "", deadline
    )
    if result is None:
        raise timed_out("cloud-init", "cloud-init did not report that it had finished")
    if result.status == "error":
        raise GuestFailed(
            f"{vm.name}: cloud-init finished with errors ({_last_line(result.detail)}); "
            f"see /var/log/cloud-init.log in the VM (vmctl ssh {vm.name})"
        )
    if result.status == "degraded":
        svc.progress(f"{vm.name}: cloud-init finished with recoverable errors")
    svc.progress(f"{vm.name}: cloud-init finished")


def _look_for(svc: VmService, vm: VmRecord, node: Node) -> Callable[[], None]:
    """One look at the node for the VM's address (at most once a second), for waiting when no
    watcher runs."""
    hv = svc.connect(node)
    last = [0.0]

    def look() -> None:
        if time.monotonic() - last[0] < 1.0:
            return
        last[0] = time.monotonic()
        age = (datetime.now(UTC) - vm.created_at).total_seconds()
        try:
            found = discover(hv, node.network.name, [vm], svc.sources, lambda _vm: age > 30)
            for f in found:
                record(svc.store, svc.cache, f)
        except VmctlError as exc:
            svc.progress(f"{vm.name}: {exc}")

    return look


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no details"
