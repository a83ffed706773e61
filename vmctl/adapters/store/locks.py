"""Per-VM operation locks and this installation's id.

A VM's lock is a PostgreSQL session advisory lock held by a connection of its own for as long as
the operation runs: operations on one VM never interleave, whichever manager (CLI or API replica)
runs them, and a process that dies (SIGKILL, a lost manager) lets go at once, because PostgreSQL
ends its session. The holder names itself in ``application_name``, so a caller that finds the VM
busy is told who holds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from vmctl.adapters import db
from vmctl.adapters.store import retry
from vmctl.adapters.store.base import CONNECT_TIMEOUT_S, StoreBase
from vmctl.core.errors import Busy

VM_LOCK_CLASS = 0x766D  # first half of the advisory lock key; the second is hashtext(name)
POLL_S = 0.1

_HOLDER_SQL = """
    SELECT a.application_name AS who, extract(epoch FROM now() - a.state_change) AS held_s
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s
      AND l.objid = hashtext(%s)::oid AND l.objsubid = 2
"""


def take_lock(
    conn: psycopg.Connection[dict[str, object]],
    sql: str,
    params: tuple[object, ...],
    timeout: float,
    busy: Callable[[], str],
) -> None:
    """Run ``sql`` (a ``pg_try_advisory_lock(...) AS got``) every POLL_S s until it takes the
    lock; Busy with ``busy()``'s message once ``timeout`` s have passed (0: one try)."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(sql, params).fetchone()
        if row and row["got"]:
            return
        if time.monotonic() >= deadline:
            raise Busy(busy())
        time.sleep(POLL_S)


class LocksMixin(StoreBase):
    _installation: str | None = None

    @contextmanager
    def vm_lock(self, name: str, operation: str, timeout: float) -> Iterator[None]:
        """Hold VM ``name``'s lock while the block runs; Busy when another operation holds it
        for ``timeout`` s more (0: do not wait). StoreUnavailable if PostgreSQL does not answer."""
        label = f"vmctl {operation} {name} by {self.actor}"[:63]
        conn = self._lock_connection(label)
        try:
            take_lock(
                conn,
                "SELECT pg_try_advisory_lock(%s, hashtext(%s)) AS got",
                (VM_LOCK_CLASS, name),
                timeout,
                lambda: self._busy_message(conn, name, operation, timeout),
            )
            yield
        finally:
            conn.close()  # ends the session: the lock goes with it

    def _lock_connection(self, label: str) -> psycopg.Connection[dict[str, object]]:
        """A connection of its own for a VM's lock, riding out a failover as ``_run`` does.

        (If the primary is lost while the lock is held, so is the lock: the operation goes on,
        and another one on that VM could start on the new primary meanwhile. Claims do not
        depend on it: they are serialized by the claim lock, in their own transaction.)"""
        kwargs = {**db.connection_kwargs(), "connect_timeout": CONNECT_TIMEOUT_S}
        window = retry.Window(self.failover_s)
        while True:
            try:
                return psycopg.connect(self._url, **kwargs, application_name=label)
            except psycopg.OperationalError as e:
                lost = retry.Lost(e, False, connected=False, permanent=retry.permanent(e))
                pause = window.next_pause(lost)
                if pause is None:
                    raise db.unreachable(self._url, e) from e
                time.sleep(pause)

    def _busy_message(
        self, conn: psycopg.Connection[dict[str, object]], name: str, operation: str, waited: float
    ) -> str:
        holder = conn.execute(_HOLDER_SQL, (VM_LOCK_CLASS, name)).fetchone()
        who = f" ({holder['who']})" if holder and holder["who"] else ""
        return (
            f"{name} is busy: another operation{who} holds it; "
            f"{operation} waited {waited:g} s (--lock-timeout)"
        )

    def installation_id(self) -> str:
        """This installation's id (schema 0004), the mark on what vmctl makes on nodes."""
        if self._installation is None:
            row = self._run(
                lambda c: c.execute("SELECT id::text AS id FROM installation").fetchone()
            )
            assert row is not None, "no installation row: run `vmctl db upgrade`"
            self._installation = str(row["id"])
        return self._installation
