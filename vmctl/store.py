"""The PostgreSQL store: the source of truth for which VMs exist, where, and in what state.

One ``Store`` holds one connection (opened on first use, in autocommit mode; each method runs in
its own transaction). A Store may be shared by threads: its methods take turns. The schema is
made by ``vmctl.db.upgrade``.
"""

from __future__ import annotations

import builtins
import getpass
import ipaddress
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from vmctl import db
from vmctl.errors import Conflict, InvalidInput, NotFound

T = TypeVar("T")
Connection = psycopg.Connection[dict[str, Any]]

STATES = ("creating", "running", "stopped", "deleting", "error")
IP_STATES = ("expected", "confirmed")
RESULTS = ("ok", "failed", "started")
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")  # the same rule as the CHECK on vms.name


@dataclass(frozen=True)
class NewVm:
    """What ``Store.claim`` needs to reserve room for a VM."""

    name: str
    ram_mb: int
    cpu: int
    disk_gb: int  # the data disk
    root_gb: int
    image: str
    mac: str
    group_name: str | None = None
    project: str | None = None


@dataclass(frozen=True)
class NodeUsage:
    """What the VMs recorded on one node take (every state; deleted VMs have no row)."""

    node: str
    cpu: int
    ram_mb: int
    disk_gb: int  # data disks + root disks
    groups: frozenset[str] = frozenset()
    vms: int = 0


@dataclass(frozen=True)
class VmRecord:
    id: int
    name: str
    node: str
    state: str
    ram_mb: int
    cpu: int
    disk_gb: int
    root_gb: int
    image: str
    mac: str
    host_key: str | None
    ip: str | None
    ip_state: str | None
    group_name: str | None
    project: str | None
    created_at: datetime  # timezone-aware, UTC
    updated_at: datetime  # timezone-aware, UTC


def default_actor() -> str:
    """Who is acting, for the event log: ``user@host``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _record(row: dict[str, Any]) -> VmRecord:
    fields = dict(row)
    fields["ip"] = None if row["ip"] is None else str(row["ip"])
    fields["created_at"] = _utc(row["created_at"])
    fields["updated_at"] = _utc(row["updated_at"])
    return VmRecord(**fields)


_USAGE_SQL = """
    SELECT node, sum(cpu) AS cpu, sum(ram_mb) AS ram_mb, sum(disk_gb + root_gb) AS disk_gb,
           count(*) AS vms, array_remove(array_agg(DISTINCT group_name), NULL) AS groups
    FROM vms GROUP BY node ORDER BY node
"""


class Store:
    def __init__(self, url: str, actor: str | None = None) -> None:
        self._url = url
        self.actor = actor or default_actor()
        self._conn: Connection | None = None
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection and transactions ---------------------------------------------------------

    def _run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one transaction.

        A connection found dead (PostgreSQL restarted, network gone) is dropped and reported as
        StoreUnavailable; the next call reconnects. If the dead connection was an old one and
        died before COMMIT was sent, nothing was committed, so the work is run once more on a new
        connection (``work`` must not have effects outside the transaction that matter twice).
        """
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None and not (self._conn.closed or self._conn.broken)
                if not reused:
                    self.close()
                    self._conn = db.connect(self._url)
                conn = self._conn
                assert conn is not None
                committing = False
                try:
                    with conn.transaction():
                        result = work(conn)
                        committing = True
                    return result
                except psycopg.OperationalError as e:
                    if not (conn.closed or conn.broken):
                        raise  # e.g. a deadlock or a cancelled query: the server is there
                    self.close()
                    if committing or not reused or attempt == 2:
                        raise db.unreachable(self._url, e) from e
            raise AssertionError("not reached")

    # -- VMs ---------------------------------------------------------------------------------

    def claim(
        self,
        vm: NewVm,
        choose: Callable[[builtins.list[NodeUsage]], str],
        host_key: str | None = None,
    ) -> VmRecord:
        """Reserve room for ``vm``: record it as 'creating' on the node ``choose`` picks.

        All claims are serialized by a transaction-level advisory lock, so ``choose`` sees the
        usage of every VM claimed before it and none claimed after. If ``choose`` raises (e.g.
        CapacityError), nothing is recorded. Conflict if the name is taken.
        """
        if not NAME_RE.fullmatch(vm.name):
            raise InvalidInput("name", f"{vm.name!r} must match ^[a-z][a-z0-9-]{{0,62}}$")

        def work(conn: Connection) -> VmRecord:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (db.CLAIM_LOCK_KEY,))
            row = conn.execute("SELECT node FROM vms WHERE name = %s", (vm.name,)).fetchone()
            if row is not None:
                raise Conflict(f"a VM named {vm.name} exists already (on node {row['node']})")
            node = choose(self._usage(conn))
            try:
                inserted = conn.execute(
                    """INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image,
                                        mac, host_key, group_name, project)
                       VALUES (%(name)s, %(node)s, 'creating', %(ram_mb)s, %(cpu)s, %(disk_gb)s,
                               %(root_gb)s, %(image)s, %(mac)s, %(host_key)s, %(group_name)s,
                               %(project)s)
                       RETURNING *""",
                    {**asdict(vm), "node": node, "host_key": host_key},
                ).fetchone()
            except psycopg.errors.UniqueViolation as e:
                raise Conflict(f"a VM named {vm.name} exists already") from e
            except psycopg.errors.CheckViolation as e:
                constraint = e.diag.constraint_name or "vms"
                field = constraint.removeprefix("vms_").removesuffix("_check")
                raise InvalidInput(field, "not accepted by the database") from e
            assert inserted is not None
            return _record(inserted)

        return self._run(work)

    def get(self, name: str) -> VmRecord:
        row = self._run(
            lambda c: c.execute("SELECT * FROM vms WHERE name = %s", (name,)).fetchone()
        )
        if row is None:
            raise NotFound(f"no VM named {name}")
        return _record(row)

    def list(self, node: str | None = None, state: str | None = None) -> builtins.list[VmRecord]:
        """VMs ordered by name, optionally only those on ``node`` and/or in ``state``."""
        if state is not None and state not in STATES:
            raise InvalidInput("state", f"must be one of {', '.join(STATES)}, not {state!r}")
        rows = self._run(
            lambda c: c.execute(
                """SELECT * FROM vms
                   WHERE (%(node)s::text IS NULL OR node = %(node)s)
                     AND (%(state)s::text IS NULL OR state = %(state)s)
                   ORDER BY name""",
                {"node": node, "state": state},
            ).fetchall()
        )
        return [_record(row) for row in rows]

    def set_state(self, name: str, state: str) -> VmRecord:
        if state not in STATES:
            raise ValueError(f"unknown VM state {state!r}")
        return self._update(name, "state = %(state)s", {"state": state})

    def set_ip(self, name: str, ip: str | None, ip_state: str | None) -> VmRecord:
        """Record the VM's address (both given) or forget it (both None)."""
        if (ip is None) != (ip_state is None) or (ip_state not in (*IP_STATES, None)):
            raise ValueError(f"bad ip/ip_state pair: {ip!r}, {ip_state!r}")
        address = None if ip is None else ipaddress.ip_address(ip)
        return self._update(
            name, "ip = %(ip)s, ip_state = %(ip_state)s", {"ip": address, "ip_state": ip_state}
        )

    def _update(self, name: str, assignments: str, values: dict[str, Any]) -> VmRecord:
        # ``assignments`` is always a constant of this module; values go in as parameters.
        sql = f"UPDATE vms SET {assignments}, updated_at = now() WHERE name = %(name)s RETURNING *"
        row = self._run(lambda c: c.execute(sql, {**values, "name": name}).fetchone())
        if row is None:
            raise NotFound(f"no VM named {name}")
        return _record(row)

    def delete(self, name: str) -> bool:
        """Remove the VM's row; whether there was one."""
        row = self._run(
            lambda c: c.execute("DELETE FROM vms WHERE name = %s RETURNING id", (name,)).fetchone()
        )
        return row is not None

    def usage(self) -> builtins.list[NodeUsage]:
        """Per node that has VMs, what they take, ordered by node name."""
        return self._run(self._usage)

    @staticmethod
    def _usage(conn: Connection) -> builtins.list[NodeUsage]:
        return [
            NodeUsage(
                node=row["node"],
                cpu=int(row["cpu"]),
                ram_mb=int(row["ram_mb"]),
                disk_gb=int(row["disk_gb"]),
                groups=frozenset(row["groups"]),
                vms=int(row["vms"]),
            )
            for row in conn.execute(_USAGE_SQL).fetchall()
        ]

    # -- events ------------------------------------------------------------------------------

    def add_event(
        self, vm: str | None, node: str | None, action: str, result: str, detail: dict[str, Any]
    ) -> int:
        """Append to the event log (the actor is this Store's); the event's id."""
        if result not in RESULTS:
            raise ValueError(f"unknown event result {result!r}")
        row = self._run(
            lambda c: c.execute(
                """INSERT INTO events (vm, node, actor, action, result, detail)
                   VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
                (vm, node, self.actor, action, result, Jsonb(detail)),
            ).fetchone()
        )
        assert row is not None
        return int(row["id"])

    def events(self, vm: str) -> builtins.list[dict[str, Any]]:
        """The events of one VM, oldest first: dicts of id, at (UTC), vm, node, actor, action,
        result, detail."""
        rows = self._run(
            lambda c: c.execute(
                """SELECT id, at, vm, node, actor, action, result, detail FROM events
                   WHERE vm = %s ORDER BY at, id""",
                (vm,),
            ).fetchall()
        )
        return [{**row, "at": _utc(row["at"])} for row in rows]
