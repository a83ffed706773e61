"""Where a VM is: what a node shows (its DHCP leases, its ARP table, the guest agent) matched to
the VMs by MAC, and what is written and announced for an address found."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vmctl.core.addressing import Observation, address_from
from vmctl.core.records import IpChange, VmRecord
from vmctl.services.ports import AddressStore, Cache, Hypervisor

AGENT_TIMEOUT_S = 5  # how long one question to a guest agent may take


@dataclass(frozen=True)
class Found:
    name: str
    node: str
    mac: str
    ip: str
    source: str
    seen_at: float = field(default_factory=time.time, compare=False)  # when the node showed it
    created_at: datetime | None = field(default=None, compare=False)  # the VM's creation


def agent_address(hv: Hypervisor, vm: VmRecord) -> str | None:
    """The VM's IPv4 address on its vmctl interface as its guest agent reports it."""
    for mac, ip in hv.addresses(vm.name, "agent", timeout_s=AGENT_TIMEOUT_S):
        if mac.lower() == vm.mac.lower():
            address = ipaddress.ip_address(ip)
            if not (address.is_loopback or address.is_link_local):
                return ip
    return None


def discover(
    hv: Hypervisor,
    network: str,
    vms: Sequence[VmRecord],
    sources: Sequence[str],
    use_agent: Callable[[VmRecord], bool] = lambda _vm: True,
) -> list[Found]:
    """Where each VM of one node is, by the first of ``sources`` that knows (one command for the
    leases and the ARP table of all of them; the agent is asked per VM, when ``use_agent``)."""
    batch = any(source in ("lease", "arp") for source in sources)
    seen = hv.observe(network) if batch and vms else Observation()

    def agent(vm: VmRecord) -> str | None:
        return agent_address(hv, vm) if use_agent(vm) else None

    return match(seen, vms, sources, agent)


def match(
    seen: Observation,
    vms: Sequence[VmRecord],
    sources: Sequence[str],
    agent: Callable[[VmRecord], str | None] = lambda _vm: None,
) -> list[Found]:
    """Each VM's address in what a node showed, by the first of ``sources`` that knows it."""
    found = []
    for vm in vms:
        for source in sources:
            ip = agent(vm) if source == "agent" else address_from(seen, vm.mac, source)
            if ip is not None:
                found.append(Found(vm.name, vm.node, vm.mac, ip, source, created_at=vm.created_at))
                break
    return found


def record(store: AddressStore, cache: Cache, found: Found) -> IpChange | None:
    """Write what a look found to PostgreSQL and, when it changed something, announce it."""
    change = store.record_ip(found.name, found.mac, found.ip, found.source)
    if change is not None:
        cache.publish_ip(change_message(change))
    return change


def change_message(change: IpChange) -> dict[str, Any]:
    """What goes out on the Redis channel for a recorded address."""
    return {
        "name": change.name,
        "node": change.node,
        "ip": change.ip,
        "previous": change.previous,
        "source": change.source,
        "at": change.at.isoformat(),
    }
