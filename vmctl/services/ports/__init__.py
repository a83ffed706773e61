"""The ports: what the services need from the outside world, as small Protocols, one module
per outside system (``node``, ``guest``, ``store``, ``cache``, ``metrics``).

Adapters (``vmctl.adapters``) implement them over Fabric, libvirt, PostgreSQL and Redis; unit tests
pass fakes. A service never names an adapter class, only these.
"""

from vmctl.services.ports.cache import Cache, Subscription, SubscriptionLost
from vmctl.services.ports.claims import AllNodes, NodeShares
from vmctl.services.ports.guest import CloudInit, GuestProbe
from vmctl.services.ports.jobs import JobQueue
from vmctl.services.ports.metrics import NoMetrics, WatchMetrics
from vmctl.services.ports.node import Connect, Hypervisor, Result, Runner
from vmctl.services.ports.store import (
    AddressStore,
    EventLog,
    Heartbeats,
    IdempotencyStore,
    ImageStore,
    SnapshotStore,
    Store,
    TokenStore,
    VmLocks,
    VmReader,
    VmStore,
)

__all__ = [
    "AddressStore",
    "AllNodes",
    "Cache",
    "CloudInit",
    "Connect",
    "EventLog",
    "GuestProbe",
    "Heartbeats",
    "Hypervisor",
    "IdempotencyStore",
    "ImageStore",
    "JobQueue",
    "NoMetrics",
    "NodeShares",
    "Result",
    "Runner",
    "SnapshotStore",
    "Store",
    "Subscription",
    "SubscriptionLost",
    "TokenStore",
    "VmLocks",
    "VmReader",
    "VmStore",
    "WatchMetrics",
]
