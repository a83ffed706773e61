"""Where a VM is: what a node shows (its DHCP leases, its ARP table, the guest agent) matched to
the VMs by MAC, and what is written and announced for an address found."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from vmctl.core.addressing import Observation, addresses
from vmctl.core.records import IpChange
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


class Target(Protocol):
    """What finding a VM takes: a VmRecord or the watcher's slimmer WatchTarget."""

    @property
    def name(self) -> str: ...
    @property
    def node(self) -> str: ...
    @property
    def mac(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...


T = TypeVar("T", bound=Target)


def agent_address(hv: Hypervisor, vm: Target) -> str | None:
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
    vms: Sequence[T],
    sources: Sequence[str],
    use_agent: Callable[[T], bool] = lambda _vm: True,
) -> list[Found]:
    """Where each VM of one node is, by the first of ``sources`` that knows (one command for the
    leases and the ARP table of all of them; the agent is asked per VM, when ``use_agent``)."""
    batch = any(source in ("lease", "arp") for source in sources)
    seen = hv.observe(network) if batch and vms else Observation()

    def agent(vm: T) -> str | None:
        return agent_address(hv, vm) if use_agent(vm) else None

    return match(seen, vms, sources, agent)


def match(
    seen: Observation,
    vms: Sequence[T],
    sources: Sequence[str],
    agent: Callable[[T], str | None] = lambda _vm: None,
) -> list[Found]:
    """Each VM's address in what a node showed, by the first of ``sources`` that knows it."""
    shown = {source: addresses(seen, source) for source in sources if source != "agent"}
    found = []
    for vm in vms:
        for source in sources:
            ip = agent(vm) if source == "agent" else shown[source].get(vm.mac.lower())
            if ip is not None:
                found.append(_found(vm, ip, source))
                break
    return found


def match_shown(seen: Observation, by_mac: Mapping[str, T], sources: Sequence[str]) -> list[Found]:
    """``match`` for many VMs (``by_mac``: by lower-case MAC) and the batch sources: the work
    grows with what the node shows, not with the number of VMs."""
    shown = {source: addresses(seen, source) for source in sources if source != "agent"}
    macs = {mac for table in shown.values() for mac in table if mac in by_mac}
    found = []
    for mac in sorted(macs):
        for source, table in shown.items():
            ip = table.get(mac)
            if ip is not None:
                found.append(_found(by_mac[mac], ip, source))
                break
    return found


def _found(vm: Target, ip: str, source: str) -> Found:
    return Found(vm.name, vm.node, vm.mac, ip, source, created_at=vm.created_at)


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
