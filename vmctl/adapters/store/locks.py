"""Per-VM operation locks and this installation's id.

A VM's lock is a PostgreSQL session advisory lock held by a connection of its own for as long as
the operation runs: operations on one VM never interleave, whichever manager (CLI or API replica)
runs them, and a process that dies (SIGKILL, a lost manager) lets go at once, because PostgreSQL
ends its session. The holder names itself in ``application_name``, so a caller that finds the VM
busy is told who holds it.

A lock goes with its session: a lost PostgreSQL (a failover, a restart) takes it away while the
operation goes on. So while a lock is held a keeper thread looks at its connection every
``KEEP_S`` s and, once it is lost, connects again (to the new primary) and takes the lock again
at once; if another operation took it meanwhile, the keeper says so in the log (``lock lost``)
and the holder's exit says so too (logged, not raised: the operation's work is done by then;
`vmctl reconcile` judges what two of them left).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from vmctl.adapters import db
from vmctl.adapters.store import retry
from vmctl.adapters.store.base import CONNECT_TIMEOUT_S, StoreBase
from vmctl.core.errors import Busy
from vmctl.core.logfields import fields

VM_LOCK_CLASS = 0x766D  # first half of the advisory lock key; the second is hashtext(name)
POLL_S = 0.1
KEEP_S = 1.0  # how often a held lock's connection is looked at
TAKE_SQL = "SELECT pg_try_advisory_lock(%s, hashtext(%s)) AS got"  # (class, text)
log = logging.getLogger("vmctl.store")

_HOLDER_SQL = """
    SELECT a.application_name AS who, extract(epoch FROM now() - a.state_change) AS held_s
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s
      AND l.objid = hashtext(%s)::oid AND l.objsubid = 2
"""


def take_lock(
    conn: psycopg.Connection[dict[str, object]],
    key: tuple[int, str],
    timeout: float,
    busy: Callable[[], str],
) -> None:
    """Try to take the advisory lock ``key`` (TAKE_SQL) every POLL_S s until it is taken; Busy
    with ``busy()``'s message once ``timeout`` s have passed (0: one try)."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(TAKE_SQL, key).fetchone()
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
        with self.hold_lock(
            label,
            (VM_LOCK_CLASS, name),
            timeout,
            lambda conn: self._busy_message(conn, name, operation, timeout),
            what=f"VM {name} ({operation})",
        ):
            yield

    @contextmanager
    def hold_lock(
        self,
        label: str,
        key: tuple[int, str],
        timeout: float,
        busy: Callable[[psycopg.Connection[dict[str, object]]], str],
        what: str,
    ) -> Iterator[None]:
        """Hold the advisory lock ``key`` (its class, and the text its second half is the
        hashtext of) on a connection of its own named ``label``, kept through a failover by a
        ``_Keeper``; Busy with ``busy(conn)`` once ``timeout`` s have passed."""
        conn = self._lock_connection(label)
        try:
            take_lock(conn, key, timeout, lambda: busy(conn))
        except BaseException:
            conn.close()
            raise
        keeper = _Keeper(conn, key, what, lambda: self._connect_once(label))
        keeper.start()
        try:
            yield
        finally:
            keeper.finish()  # closes its connection: the lock goes with the session
            if keeper.lost:
                log.warning("lock lost", extra=fields(lock=what, why=keeper.lost))

    def _connect_once(self, label: str) -> psycopg.Connection[dict[str, object]]:
        kwargs = {**db.connection_kwargs(), "connect_timeout": CONNECT_TIMEOUT_S}
        return psycopg.connect(self._url, **kwargs, application_name=label)

    def _lock_connection(self, label: str) -> psycopg.Connection[dict[str, object]]:
        """A connection of its own for a VM's lock, riding out a failover as ``_run`` does
        (once the lock is held, ``_Keeper`` keeps it through one)."""
        window = retry.Window(self.failover_s)
        while True:
            try:
                return self._connect_once(label)
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


class _Keeper(threading.Thread):
    """Looks at a held lock's connection every KEEP_S s; once it is lost, takes the lock again
    on a new connection (tried every KEEP_S s until the holder is done). ``lost`` says why the
    lock could not be kept: another session took it meanwhile."""

    def __init__(
        self,
        conn: psycopg.Connection[dict[str, object]],
        key: tuple[int, str],
        what: str,
        connect: Callable[[], psycopg.Connection[dict[str, object]]],
    ) -> None:
        super().__init__(name=f"lock-keeper {what}", daemon=True)
        self.conn = conn
        self.key = key
        self.what = what
        self.connect = connect
        self.lost: str | None = None
        self._done = threading.Event()
        self._guard = threading.Lock()  # the connection is the keeper's and finish()'s

    def run(self) -> None:
        broken = False
        while not self._done.wait(KEEP_S):
            with self._guard:
                if self._done.is_set():
                    return
                if not broken:
                    try:
                        self.conn.execute("SELECT 1")
                        continue
                    except psycopg.Error:
                        log.warning("lock connection lost", extra=fields(lock=self.what))
                broken = not self._take_again()
                if self.lost is not None:
                    return

    def _take_again(self) -> bool:
        try:
            conn = self.connect()
        except psycopg.Error:
            return False  # no primary yet: next time
        try:
            row = conn.execute(TAKE_SQL, self.key).fetchone()
        except psycopg.Error:
            conn.close()
            return False
        old, self.conn = self.conn, conn
        with contextlib.suppress(psycopg.Error):
            old.close()
        if row and row["got"]:
            log.warning(
                "lock taken again after its connection was lost", extra=fields(lock=self.what)
            )
            return True
        self.lost = "another operation took it while its connection was lost"
        log.error("lock lost", extra=fields(lock=self.what, why=self.lost))
        return True

    def finish(self) -> None:
        self._done.set()
        with self._guard, contextlib.suppress(psycopg.Error):
            self.conn.close()
        self.join(timeout=KEEP_S * 4)
