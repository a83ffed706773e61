"""The PostgreSQL store's connections: one pool per PgStore, one transaction per method.

The pool is opened on first use (so building a store costs nothing) and keeps one connection
ready, growing to ``max_size`` while threads share the store. Every connection it hands out was
checked just before (a connection that died while idle is replaced), is in autocommit mode and
returns rows as dicts; each method runs in one explicit transaction of its own.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Self, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from vmctl.adapters import db
from vmctl.adapters.store import retry
from vmctl.core.errors import StoreUnavailable
from vmctl.core.records import VmRecord, default_actor

T = TypeVar("T")
Connection = psycopg.Connection[dict[str, Any]]

MAX_SIZE = 4  # connections per store: the CLI uses one, a threaded server shares the rest
WAIT_S = 5.0  # how long a call waits for a connection before it is StoreUnavailable
CONNECT_TIMEOUT_S = 4  # each attempt to connect: below WAIT_S, so a waiting call learns why
RECONNECT_S = 5.0  # how long the pool retries on its own; then it connects when asked again
_POLL_S = 0.1  # how often a waiting call looks whether the pool's attempts to connect failed

# The pool's workers log each failed attempt to connect as a warning. Calls report an outage as
# StoreUnavailable already: unless the application configures logging, keep them off stderr
# (without a handler of its own, Python would print them bare, amid the CLI's output).
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())


def utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


_VM_FIELDS = frozenset(f.name for f in dataclasses.fields(VmRecord))


def vm_record(row: dict[str, Any]) -> VmRecord:
    """A row of vms as a VmRecord. Columns only the database uses (row_version) and columns
    this vmctl does not know are left out: a newer schema (applied by a newer vmctl during a
    rolling upgrade) does not break an older one's reads."""
    fields = {k: v for k, v in row.items() if k in _VM_FIELDS}
    fields["ip"] = None if row["ip"] is None else str(row["ip"])
    fields["reserved_ip"] = None if row.get("reserved_ip") is None else str(row["reserved_ip"])
    fields["move_ip"] = None if row.get("move_ip") is None else str(row["move_ip"])
    fields["created_at"] = utc(row["created_at"])
    fields["updated_at"] = utc(row["updated_at"])
    return VmRecord(**fields)


def _shutting_down(error: psycopg.Error) -> bool:
    """The server ended the session (SQLSTATE class 57P: shut down, crashed, starting up): the
    connection is as good as dead, even before psycopg marks it broken."""
    return (error.sqlstate or "").startswith("57P")


def _gone(sql: str, params: tuple[object, ...]) -> Callable[[Connection], dict[str, Any] | None]:
    """The ``confirm`` of a delete whose outcome is unknown: when ``sql`` finds no row, the row
    is gone, which is what the delete was for (a stand-in row for "there was one")."""

    def confirm(conn: Connection) -> dict[str, Any] | None:
        return {"gone": True} if conn.execute(sql, params).fetchone() is None else None

    return confirm


class _ConnectAttempts:
    """What the pool's attempts to connect came to: its workers report, waiting calls look."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures = 0
        self.error: Exception | None = None  # the last failure's, until an attempt succeeds

    def failed(self, error: Exception) -> None:
        with self._lock:
            self.failures += 1
            self.error = error

    def succeeded(self) -> None:
        with self._lock:
            self.error = None

    def failure_since(self, failures: int) -> Exception | None:
        """The error of an attempt that failed after the first ``failures``, unless one
        succeeded since."""
        with self._lock:
            return self.error if self.failures > failures else None


def _reporting_to(attempts: _ConnectAttempts) -> type[Connection]:
    """The class of the pool's connections: their making is reported to ``attempts``."""

    class ReportingConnection(Connection):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            try:
                conn = super().connect(conninfo, **kwargs)
            except psycopg.Error as e:
                attempts.failed(e)
                raise
            attempts.succeeded()
            return conn

    return ReportingConnection


class StoreBase:
    """Connection handling shared by the parts of ``PgStore``; safe to share between threads."""

    def __init__(
        self,
        url: str,
        actor: str | None = None,
        max_size: int = MAX_SIZE,
        failover_s: float | None = None,
    ) -> None:
        self._url = url
        # how long a call rides out a lost PostgreSQL; by default FAILOVER_S when the URL names
        # several hosts (a failover is expected there), else 0: an outage is reported at once
        self.failover_s = retry.default_window(url) if failover_s is None else failover_s
        self.actor = actor or default_actor()
        self.max_size = max_size
        self._pool: ConnectionPool[Connection] | None = None
        self._attempts = _ConnectAttempts()
        self._lock = threading.Lock()
        # the API's lists, by (project, node, state, limit, after): (vms version, page)
        self._lists: dict[tuple[object, ...], tuple[int, tuple[str, int, str | None]]] = {}
        self._lists_lock = threading.Lock()

    def close(self) -> None:
        """Close the pool and its connections; the next call opens a new pool."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> ConnectionPool[Connection]:
        with self._lock:
            if self._pool is None:
                db.check_url(self._url)  # a malformed URL is a ConfigError, not an outage
                pool = ConnectionPool(
                    self._url,
                    connection_class=_reporting_to(self._attempts),
                    kwargs={**db.connection_kwargs(), "connect_timeout": CONNECT_TIMEOUT_S},
                    min_size=1,
                    max_size=self.max_size,
                    open=False,
                    check=ConnectionPool.check_connection,
                    timeout=WAIT_S,
                    reconnect_timeout=RECONNECT_S,
                    name=f"vmctl-store {db.describe(self._url)}",
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    def _getconn(self) -> tuple[ConnectionPool[Connection], Connection]:
        """A connection of the pool, just checked, and its pool.

        StoreUnavailable when none comes within WAIT_S, or as soon as an attempt of the pool to
        connect fails while this call waits (with libpq's reason: "Connection refused"...).
        """
        failures = self._attempts.failures
        deadline = time.monotonic() + WAIT_S
        while True:
            pool = self._pool
            if pool is None:
                pool = self._open()
            wait = min(_POLL_S, deadline - time.monotonic())
            try:
                return pool, pool.getconn(timeout=max(wait, 0.001))
            except PoolClosed:
                continue  # closed by another thread meanwhile: the next round opens a new pool
            except PoolTimeout as e:
                error = self._attempts.failure_since(failures)
                if error is None and time.monotonic() < deadline:
                    continue
                cause = error or self._attempts.error
                if cause is None:  # busy, or slow to connect: the pool's message gives the slice
                    busy = f"no connection ({self.max_size} at most) free within {WAIT_S:g} s"
                    cause = PoolTimeout(busy)
                    cause.__cause__ = e
                raise db.unreachable(self._url, cause) from cause

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        pool, conn = self._getconn()
        try:
            yield conn
        finally:
            pool.putconn(conn)  # a broken connection is dropped and replaced by the pool

    def _run(
        self,
        work: Callable[[Connection], T],
        confirm: Callable[[Connection], T | None] | None = None,
    ) -> T:
        """Run ``work`` in one transaction, riding out a lost PostgreSQL for ``failover_s``.

        A connection found dead (PostgreSQL restarted, a failover, network gone) is replaced by
        the pool. If it died before COMMIT was sent, nothing was committed: ``work`` runs again
        on another connection (it must not have effects outside the transaction that matter
        twice). Once COMMIT was sent, whether it was committed is unknown: then ``confirm`` runs
        on the new connection (the primary that took over) and tells: a result when the
        commit happened (that is the call's result), None when it did not (``work`` runs
        again). ``work`` without ``confirm`` must be idempotent (running it twice leaves what
        running it once does): every such writer in this package is, or documents why not.

        Without a failover window (``failover_s`` 0, single-host URLs by default) this is the
        old contract: one more try when the connection died before COMMIT, else
        StoreUnavailable at once.
        """
        window = retry.Window(self.failover_s)
        unknown = False  # the last attempt's COMMIT was sent and its answer lost
        while True:
            try:
                if unknown and confirm is not None:
                    found = self._once(confirm)
                    if found is not None:
                        return found
                    unknown = False
                return self._once(work)
            except retry.Lost as lost:
                unknown = unknown or lost.committing
                pause = window.next_pause(lost)
                if pause is None:
                    error = db.unreachable(self._url, lost.error)
                    if unknown:
                        error = StoreUnavailable(
                            f"{error}; whether the change was saved is unknown"
                        )
                    raise error from lost.error
                time.sleep(pause)

    def _getconn_or_lost(self) -> tuple[ConnectionPool[Connection], Connection]:
        """``_getconn``, its StoreUnavailable as retry.Lost (no connection was had)."""
        try:
            return self._getconn()
        except StoreUnavailable as e:
            cause = e.__cause__ if isinstance(e.__cause__, Exception) else e
            lost = retry.Lost(cause, False, connected=False, permanent=retry.permanent(cause))
            raise lost from e

    def _once(self, work: Callable[[Connection], T]) -> T:
        """``work`` in one transaction on a connection of the pool; retry.Lost when the
        connection could not be had or was lost (saying whether COMMIT had been sent)."""
        pool, conn = self._getconn_or_lost()
        try:
            committing = False
            with conn.transaction():
                result = work(conn)
                committing = True
            return result
        except psycopg.errors.ReadOnlySqlTransaction as e:
            # a standby (the old primary, demoted): this connection is of no use for writing
            conn.close()
            raise retry.Lost(e, committing=False) from e
        except psycopg.OperationalError as e:
            if not (conn.closed or conn.broken or _shutting_down(e)):
                raise  # e.g. a deadlock or a cancelled query: the server is there
            raise retry.Lost(e, committing=committing) from e
        finally:
            pool.putconn(conn)  # a broken or closed connection is dropped and replaced

    def ping(self) -> None:
        """StoreUnavailable unless PostgreSQL answers."""
        self._run(lambda c: c.execute("SELECT 1").fetchone())
