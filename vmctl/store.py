"""The PostgreSQL store: the source of truth for which VMs exist, where, and in what state.

One ``Store`` holds one connection (opened on first use, in autocommit mode; each method runs in
its own transaction). A Store may be shared by threads: its methods take turns. The schema is
made by ``vmctl.db.upgrade``.
"""

from __future__ import annotations

import builtins
import getpass
import hmac
import ipaddress
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from vmctl import addressing, db
from vmctl.errors import CapacityError, Conflict, Forbidden, InvalidInput, NotFound
from vmctl.inventory import AddressPool

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
    phone_home_hash: str | None = None  # SHA-256 of the VM's one-time phone-home secret


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
    ip_pool: str | None = None  # managed networks: the address space reserved_ip belongs to
    reserved_ip: str | None = None  # the address reserved for the VM's MAC in the DHCP
    phone_home_hash: str | None = None


@dataclass(frozen=True)
class IpChange:
    """An address the watcher recorded: what it was before and how it was learned."""

    name: str
    node: str
    ip: str
    previous: str | None
    previous_state: str | None
    source: str
    at: datetime


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
    fields["reserved_ip"] = None if row.get("reserved_ip") is None else str(row["reserved_ip"])
    fields["created_at"] = _utc(row["created_at"])
    fields["updated_at"] = _utc(row["updated_at"])
    return VmRecord(**fields)


_USAGE_SQL = """
    SELECT node, sum(cpu) AS cpu, sum(ram_mb) AS ram_mb, sum(disk_gb + root_gb) AS disk_gb,
           count(*) AS vms, array_remove(array_agg(DISTINCT group_name), NULL) AS groups
    FROM vms GROUP BY node ORDER BY node
"""


# The filters of Store.list and Store.list_contract_json (each one off when its value is NULL).
_LIST_FILTER = """(%(node)s::text IS NULL OR node = %(node)s)
                  AND (%(state)s::text IS NULL OR state = %(state)s)
                  AND (%(project)s::text IS NULL OR project = %(project)s)"""


def _list_params(node: str | None, state: str | None, project: str | None) -> dict[str, Any]:
    if state is not None and state not in STATES:
        raise InvalidInput("state", f"must be one of {', '.join(STATES)}, not {state!r}")
    return {"node": node, "state": state, "project": project}


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

    def ping(self) -> None:
        """StoreUnavailable unless PostgreSQL answers."""
        self._run(lambda c: c.execute("SELECT 1").fetchone())

    # -- VMs ---------------------------------------------------------------------------------

    def claim(
        self,
        vm: NewVm,
        choose: Callable[[builtins.list[NodeUsage]], str],
        host_key: str | None = None,
        pool_of: Callable[[str], AddressPool | None] = lambda _node: None,
    ) -> VmRecord:
        """Reserve room for ``vm``: record it as 'creating' on the node ``choose`` picks.

        All claims are serialized by a transaction-level advisory lock, so ``choose`` sees the
        usage of every VM claimed before it and none claimed after. If ``choose`` raises (e.g.
        CapacityError), nothing is recorded. Conflict if the name is taken.

        When ``pool_of(node)`` gives an address pool (a managed network), the VM also gets a free
        address of it, recorded as its *expected* IP; CapacityError if none is left.
        """
        if not NAME_RE.fullmatch(vm.name):
            raise InvalidInput("name", f"{vm.name!r} must match ^[a-z][a-z0-9-]{{0,62}}$")

        def work(conn: Connection) -> VmRecord:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (db.CLAIM_LOCK_KEY,))
            row = conn.execute("SELECT node FROM vms WHERE name = %s", (vm.name,)).fetchone()
            if row is not None:
                raise Conflict(f"a VM named {vm.name} exists already (on node {row['node']})")
            node = choose(self._usage(conn))
            pool = pool_of(node)
            address = None if pool is None else self._free_address(conn, pool, node)
            try:
                inserted = conn.execute(
                    """INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image,
                                        mac, host_key, group_name, project,
                                        ip_pool, reserved_ip, ip, ip_state, phone_home_hash)
                       VALUES (%(name)s, %(node)s, 'creating', %(ram_mb)s, %(cpu)s, %(disk_gb)s,
                               %(root_gb)s, %(image)s, %(mac)s, %(host_key)s, %(group_name)s,
                               %(project)s, %(pool)s, %(ip)s, %(ip)s,
                               CASE WHEN %(ip)s::inet IS NULL THEN NULL ELSE 'expected' END,
                               %(phone_home_hash)s)
                       RETURNING *""",
                    {
                        **asdict(vm),
                        "node": node,
                        "host_key": host_key,
                        "pool": None if pool is None else pool.key,
                        "ip": address,
                    },
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

    @staticmethod
    def _free_address(conn: Connection, pool: AddressPool, node: str) -> IPv4Address:
        """Called under the claim lock: the address the next VM of ``pool`` gets."""
        taken = [
            row["reserved_ip"]
            for row in conn.execute(
                "SELECT reserved_ip FROM vms WHERE ip_pool = %s", (pool.key,)
            ).fetchall()
        ]
        released = {
            row["ip"]: row["released_at"]
            for row in conn.execute(
                "SELECT ip, released_at FROM released_addresses WHERE ip_pool = %s", (pool.key,)
            ).fetchall()
        }
        address = addressing.pick_address(pool, taken, released)
        if address is None:
            raise CapacityError(
                f"node {node}: every address of {pool.key} ({pool.first}-{pool.last}) is taken"
            )
        return address

    def get(self, name: str) -> VmRecord:
        row = self._run(
            lambda c: c.execute("SELECT * FROM vms WHERE name = %s", (name,)).fetchone()
        )
        if row is None:
            raise NotFound(f"no VM named {name}")
        return _record(row)

    def list(
        self, node: str | None = None, state: str | None = None, project: str | None = None
    ) -> builtins.list[VmRecord]:
        """VMs ordered by name, optionally only those on ``node``, in ``state``, of ``project``."""
        sql = f"SELECT * FROM vms WHERE {_LIST_FILTER} ORDER BY name"
        params = _list_params(node, state, project)
        rows = self._run(lambda c: c.execute(sql, params).fetchall())
        return [_record(row) for row in rows]

    def list_contract_json(
        self, project: str, node: str | None = None, state: str | None = None
    ) -> str:
        """``list`` in the HTTP API's contract shape ([{Name, RAM, CPU, Disk, IP, CreatedAt}],
        what ``vmctl.api.vm_out`` makes of a record), as JSON text built by PostgreSQL: with
        10,000 VMs this is several times faster than building records in Python."""
        sql = f"""SELECT coalesce(json_agg(json_build_object(
                      'Name', name, 'RAM', ram_mb::text, 'CPU', cpu::text, 'Disk', disk_gb::text,
                      'IP', CASE WHEN ip IS NOT NULL AND ip_state = 'confirmed'
                                 THEN host(ip) ELSE 'unassigned' END,
                      'CreatedAt', to_char(created_at AT TIME ZONE 'UTC',
                                           'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
                  ) ORDER BY name), '[]')::text AS body
                  FROM vms WHERE {_LIST_FILTER}"""
        params = _list_params(node, state, project)
        row = self._run(lambda c: c.execute(sql, params).fetchone())
        assert row is not None
        return str(row["body"])

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
        """Remove the VM's row, giving its reserved address back; whether there was one."""

        def work(conn: Connection) -> bool:
            row = conn.execute(
                "DELETE FROM vms WHERE name = %s RETURNING ip_pool, reserved_ip", (name,)
            ).fetchone()
            if row is not None and row["reserved_ip"] is not None:
                conn.execute(
                    """INSERT INTO released_addresses (ip_pool, ip) VALUES (%s, %s)
                       ON CONFLICT (ip_pool, ip) DO UPDATE SET released_at = now()""",
                    (row["ip_pool"], row["reserved_ip"]),
                )
            return row is not None

        return self._run(work)

    def record_ip(self, name: str, mac: str, ip: str, source: str) -> IpChange | None:
        """The watcher saw ``ip`` for the VM ``name`` with ``mac``: confirm it, with an event.

        None when nothing changed (already confirmed at that address) or when there is no such
        VM any more (deleted, or deleted and made again with another MAC, while it was watched).
        """
        return self._run(lambda conn: self._record_ip(conn, name, mac, ip, source))

    def record_phone_home(self, name: str, secret_hash: str, ip: str) -> IpChange | None:
        """The VM ``name`` called home from ``ip`` with the secret whose hash is given: use the
        secret up (it works once) and record the address. Forbidden if the secret is not the
        VM's (or was used already), NotFound if there is no such VM."""

        def work(conn: Connection) -> IpChange | None:
            row = conn.execute(
                "SELECT mac, phone_home_hash FROM vms WHERE name = %s FOR UPDATE", (name,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no VM named {name}")
            stored = row["phone_home_hash"]
            if stored is None or not hmac.compare_digest(stored, secret_hash):
                raise Forbidden(f"{name}: not its phone-home secret (or it was used already)")
            conn.execute("UPDATE vms SET phone_home_hash = NULL WHERE name = %s", (name,))
            return self._record_ip(conn, name, row["mac"], ip, "phone-home")

        return self._run(work)

    def _record_ip(
        self, conn: Connection, name: str, mac: str, ip: str, source: str
    ) -> IpChange | None:
        address = ipaddress.ip_address(ip)
        row = conn.execute(
            "SELECT node, ip, ip_state FROM vms WHERE name = %s AND mac = %s FOR UPDATE",
            (name, mac),
        ).fetchone()
        if row is None or (row["ip"] == address and row["ip_state"] == "confirmed"):
            return None
        previous = None if row["ip"] is None else str(row["ip"])
        now = conn.execute(
            """UPDATE vms SET ip = %s, ip_state = 'confirmed', updated_at = now()
               WHERE name = %s RETURNING updated_at""",
            (address, name),
        ).fetchone()
        assert now is not None
        detail = {"ip": ip, "previous": previous, "previous_state": row["ip_state"]}
        conn.execute(
            """INSERT INTO events (vm, node, actor, action, result, detail)
               VALUES (%s, %s, %s, 'ip', 'ok', %s)""",
            (name, row["node"], self.actor, Jsonb({**detail, "source": source})),
        )
        return IpChange(
            name=name,
            node=row["node"],
            ip=ip,
            previous=previous,
            previous_state=row["ip_state"],
            source=source,
            at=_utc(now["updated_at"]),
        )

    # -- API tokens --------------------------------------------------------------------------

    def create_token(self, project: str, token_hash: str, name: str = "") -> int:
        if not NAME_RE.fullmatch(project):
            raise InvalidInput("project", f"{project!r} must match ^[a-z][a-z0-9-]{{0,62}}$")
        row = self._run(
            lambda c: c.execute(
                "INSERT INTO api_tokens (project, name, token_hash) VALUES (%s, %s, %s) "
                "RETURNING id",
                (project, name, token_hash),
            ).fetchone()
        )
        assert row is not None
        return int(row["id"])

    def token_project(self, token_hash: str) -> str | None:
        """The project of the token with this hash; None if there is none or it was revoked."""
        row = self._run(
            lambda c: c.execute(
                "SELECT project FROM api_tokens WHERE token_hash = %s AND revoked_at IS NULL",
                (token_hash,),
            ).fetchone()
        )
        return None if row is None else str(row["project"])

    def tokens(self) -> builtins.list[dict[str, Any]]:
        rows = self._run(
            lambda c: c.execute(
                "SELECT id, project, name, created_at, revoked_at FROM api_tokens ORDER BY id"
            ).fetchall()
        )
        return [dict(row) for row in rows]

    def revoke_token(self, token_id: int) -> None:
        row = self._run(
            lambda c: c.execute(
                "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s "
                "RETURNING id",
                (token_id,),
            ).fetchone()
        )
        if row is None:
            raise NotFound(f"no API token with id {token_id}")

    # -- heartbeats --------------------------------------------------------------------------

    def heartbeat(self, process: str, kind: str, detail: dict[str, Any]) -> None:
        """Say that the long-running ``process`` (of ``kind``, e.g. watch-ip) is alive."""
        self._run(
            lambda c: c.execute(
                """INSERT INTO heartbeats (process, kind, at, detail) VALUES (%s, %s, now(), %s)
                   ON CONFLICT (process) DO UPDATE SET at = now(), detail = EXCLUDED.detail""",
                (process, kind, Jsonb(detail)),
            )
        )

    def forget_heartbeat(self, process: str) -> None:
        self._run(lambda c: c.execute("DELETE FROM heartbeats WHERE process = %s", (process,)))

    def alive(self, kind: str, within_s: float) -> builtins.list[str]:
        """The processes of ``kind`` that said they were alive in the last ``within_s`` s."""
        rows = self._run(
            lambda c: c.execute(
                """SELECT process FROM heartbeats
                   WHERE kind = %s AND at > now() - make_interval(secs => %s) ORDER BY process""",
                (kind, within_s),
            ).fetchall()
        )
        return [row["process"] for row in rows]

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
