"""The PostgreSQL store: the source of truth for which VMs exist, where, and in what state.

``PgStore`` implements ``vmctl.services.ports.Store``. It holds a pool of connections (opened on
first use; each method runs in its own transaction) and may be shared by threads. Its parts, one
module each: ``base`` (connections, transactions), ``vms``, ``addresses``, ``tokens``,
``heartbeats``, ``events``, ``locks``, ``snapshots``, ``images``, ``metrics`` and
``idempotency``. The schema
is made by ``vmctl.adapters.db.upgrade``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmctl.adapters.store.addresses import AddressesMixin
from vmctl.adapters.store.base import MAX_SIZE
from vmctl.adapters.store.events import EventsMixin
from vmctl.adapters.store.heartbeats import HeartbeatsMixin
from vmctl.adapters.store.idempotency import IdempotencyMixin
from vmctl.adapters.store.images import ImagesMixin
from vmctl.adapters.store.locks import LocksMixin
from vmctl.adapters.store.metrics import MetricsMixin
from vmctl.adapters.store.snapshots import SnapshotsMixin
from vmctl.adapters.store.tokens import TokensMixin
from vmctl.adapters.store.vms import VmsMixin

__all__ = ["MAX_SIZE", "PgStore"]


class PgStore(
    VmsMixin,
    AddressesMixin,
    TokensMixin,
    HeartbeatsMixin,
    EventsMixin,
    IdempotencyMixin,  # (uses LocksMixin's hold_lock)
    LocksMixin,
    SnapshotsMixin,
    ImagesMixin,
    MetricsMixin,
):
    """All of PostgreSQL that vmctl uses:
    ``PgStore(url, actor=None, max_size=MAX_SIZE, failover_s=None)``."""


if TYPE_CHECKING:
    from vmctl.services import ports

    def _implements_the_port(store: PgStore) -> ports.Store:
        return store
