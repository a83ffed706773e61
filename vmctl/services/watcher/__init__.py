"""vmctl watch-ip: learn each VM's address as soon as its node knows it.

Per node: a follower streams the DHCP leases the moment the node's DHCP server writes them
(scripts/watch-leases.sh on libvirt's lease file, one long-lived command); a looker runs one
command for the DHCP leases and the ARP table, every ``fast_s`` while one of the node's VMs has no
confirmed address (``following_s`` while the follower is up), every ``idle_s`` otherwise (to catch
changed addresses); the guest agent is asked per VM as a late fallback. Each has its own SSH
connection, so a slow one holds up nothing else. The main thread reads the VM list from
PostgreSQL, writes what the nodes report (``Store.record_ip``: the address, ``ip_state``
confirmed, an ``ip`` event) and announces it on the Redis channel ``vmctl:ip``.

Nothing is lost when something is away: a node that does not answer is retried with backoff; an
address learned while PostgreSQL is down is kept and written when it is back; Redis is optional.

Modules: ``discovery`` (where a VM is, what is recorded and announced), ``node`` (one node's
threads), ``backoff``, ``shared`` (the state the threads share), ``timing``, ``service`` (the
``Watcher``: its main loop, and one pass with ``once``).
"""

from __future__ import annotations

from vmctl.services.watcher.discovery import (
    Found,
    agent_address,
    change_message,
    discover,
    match,
    record,
)
from vmctl.services.watcher.service import KIND, WATCHED_STATES, Watcher
from vmctl.services.watcher.timing import Timing

__all__ = [
    "KIND",
    "WATCHED_STATES",
    "Found",
    "Timing",
    "Watcher",
    "agent_address",
    "change_message",
    "discover",
    "match",
    "record",
]
