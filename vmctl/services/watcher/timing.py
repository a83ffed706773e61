"""How often the watcher looks, reads and beats."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    fast_s: float = 0.5  # a node with VMs waiting for an address is looked at this often
    following_s: float = 2.0  # ... while its lease file is followed (ARP is all a look adds)
    idle_s: float = 5.0  # ... and with none
    refresh_s: float = 1.0  # the VM list is read from PostgreSQL this often
    agent_after_s: float = 30.0  # ask the guest agent once a VM waited this long for DHCP/ARP
    agent_every_s: float = 3.0  # ... and then at most this often
    heartbeat_s: float = 5.0


DEFAULT_TIMING = Timing()
