"""Which address a new VM gets on a managed network, and which address a watcher believes.

Pure functions: the store feeds them what PostgreSQL holds, the watcher what a node reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from vmctl.core import validation

if TYPE_CHECKING:  # inventory brings pydantic and yaml: not for `vmctl --help`
    from vmctl.core.inventory import AddressPool

SOURCES = ("lease", "arp", "agent")  # every way vmctl knows to learn a VM's address


def pick_address(
    pool: AddressPool,
    taken: Iterable[IPv4Address],
    released: Mapping[IPv4Address, datetime],
) -> IPv4Address | None:
    """A free address of ``pool``: one never handed out if there is one (lowest first), else the
    one given back longest ago; None when every address is taken."""
    busy = set(taken) | set(pool.exclude)
    best: IPv4Address | None = None
    best_released: datetime | None = None
    for number in range(int(pool.first), int(pool.last) + 1):
        ip = IPv4Address(number)
        if ip in busy:
            continue
        when = released.get(ip)
        if when is None:
            return ip
        if best_released is None or when < best_released:
            best, best_released = ip, when
    return best


@dataclass(frozen=True)
class Lease:
    mac: str
    ip: str
    expiry: str = ""  # "YYYY-MM-DD HH:MM:SS" as virsh prints it: sorts as text


@dataclass(frozen=True)
class Neighbor:
    mac: str
    ip: str
    state: str  # REACHABLE, STALE, DELAY, PROBE, PERMANENT, ...


@dataclass(frozen=True)
class Observation:
    """What one look at a node shows: its DHCP leases and its ARP table."""

    leases: tuple[Lease, ...] = ()
    neighbors: tuple[Neighbor, ...] = ()


# ARP entries by how much they are worth: a confirmed neighbour beats one that may have moved.
_NEIGHBOR_RANK = {"PERMANENT": 0, "REACHABLE": 1, "DELAY": 2, "PROBE": 2, "STALE": 3, "NOARP": 4}


def address_from(observation: Observation, mac: str, source: str) -> str | None:
    """The address ``source`` ("lease" or "arp") shows for ``mac``, or None (see ``addresses``)."""
    return addresses(observation, source).get(mac.lower())


def addresses(observation: Observation, source: str) -> dict[str, str]:
    """Every MAC (lower case) that ``source`` ("lease" or "arp") shows, with its address.

    Several leases for one MAC (an old one not yet expired): the one that expires last. Several
    ARP entries: the most trustworthy state, then the lowest address for a stable answer.
    """
    if source == "lease":
        best: dict[str, Lease] = {}
        for lease in observation.leases:
            mac = lease.mac.lower()
            if mac not in best or lease.expiry > best[mac].expiry:
                best[mac] = lease
        return {mac: lease.ip for mac, lease in best.items()}
    if source == "arp":
        ranked: dict[str, tuple[int, IPv4Address]] = {}
        for n in observation.neighbors:
            rank = _NEIGHBOR_RANK.get(n.state.upper())
            if rank is None:
                continue
            key = (rank, IPv4Address(n.ip))
            mac = n.mac.lower()
            if mac not in ranked or key < ranked[mac]:
                ranked[mac] = key
        return {mac: str(ip) for mac, (_rank, ip) in ranked.items()}
    raise ValueError(f"not a batch source: {source!r}")


def parse_sources(text: str) -> tuple[str, ...]:
    """``"lease,arp"`` → ("lease", "arp"); ValueError naming what is not a source."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in SOURCES]
    if unknown or not names:
        raise ValueError(
            f"{', '.join(unknown) or 'nothing'} is not a source: use a comma-separated list "
            f"of {', '.join(SOURCES)}"
        )
    repeated = validation.twice(names)
    if repeated:
        raise ValueError(f"{', '.join(repeated)} is named twice in {text!r}")
    return names
