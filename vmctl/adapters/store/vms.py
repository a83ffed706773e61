"""The ``vms`` table: claiming room for a VM, reading, updating and deleting its row."""

from __future__ import annotations

import builtins
import ipaddress
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import datetime
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.rows

from vmctl.adapters import db
from vmctl.adapters.store import retry
from vmctl.adapters.store.base import Connection, StoreBase, _shutting_down, utc, vm_record
from vmctl.core import addressing
from vmctl.core.errors import CapacityError, Conflict, InvalidInput, NotFound
from vmctl.core.records import (
    IP_STATES,
    STATES,
    NewVm,
    NodeUsage,
    VmRecord,
    WatchChanges,
    WatchTarget,
)

if TYPE_CHECKING:
    from vmctl.core.inventory import AddressPool

_USAGE_SQL = """
    SELECT node, sum(cpu) AS cpu, sum(ram_mb) AS ram_mb, sum(disk_gb) AS disk_gb, sum(vms) AS vms,
           array_remove(array_agg(NULLIF(group_name, '') ORDER BY group_name), NULL) AS groups
    FROM node_usage WHERE vms > 0  -- kept by a trigger on vms (schema 0008)
    GROUP BY node ORDER BY node
"""

_INSERT_SQL = """
    INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image, mac, host_key,
                     group_name, project, ip_pool, reserved_ip, ip, ip_state, phone_home_hash,
                     claim_id)
    VALUES (%(name)s, %(node)s, 'creating', %(ram_mb)s, %(cpu)s, %(disk_gb)s, %(root_gb)s,
            %(image)s, %(mac)s, %(host_key)s, %(group_name)s, %(project)s, %(pool)s, %(ip)s,
            %(ip)s, CASE WHEN %(ip)s::inet IS NULL THEN NULL ELSE 'expected' END,
            %(phone_home_hash)s, %(claim_id)s)
    RETURNING *
"""

_FINISH_MOVE_SQL = """
    UPDATE vms SET node = move_node, ip_pool = move_ip_pool, reserved_ip = move_ip,
                   ip = move_ip, ip_state = CASE WHEN move_ip IS NULL THEN NULL ELSE 'expected' END,
                   move_node = NULL, move_ip_pool = NULL, move_ip = NULL, updated_at = now()
    WHERE name = %s RETURNING *
"""

# The filters of list and list_contract_page (each one off when its value is NULL).
_LIST_FILTER = """(%(node)s::text IS NULL OR node = %(node)s)
                  AND (%(state)s::text IS NULL OR state = %(state)s)
                  AND (%(project)s::text IS NULL OR project = %(project)s)"""


# A page of the list: names after %(after)s, at most %(limit)s rows (each off when NULL).
_PAGE_FILTER = f"""{_LIST_FILTER} AND (%(after)s::text IS NULL OR name > %(after)s)"""
_PAGE_END = "ORDER BY name LIMIT %(limit)s"

# The HTTP API's list: what vmctl.api.models.vm_out makes of each record, as one JSON array
# (format() and string_agg: a third cheaper than json_agg of json_build_object; every value but
# the name is digits, an address or a time, which need no escaping).
_CONTRACT_SQL = f"""
    SELECT '[' || coalesce(string_agg(format(
               '{{"Name": %%s, "RAM": "%%s", "CPU": "%%s", "Disk": "%%s", "IP": "%%s", '
               '"CreatedAt": "%%s"}}',
               to_json(name), ram_mb, cpu, disk_gb,
               CASE WHEN ip IS NOT NULL AND ip_state = 'confirmed'
                    THEN host(ip) ELSE 'unassigned' END,
               to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
           ), ', ' ORDER BY name), '') || ']' AS body, count(*) AS n, max(name) AS last,
           (SELECT version FROM vms_version) AS version
    FROM (SELECT * FROM vms WHERE {_PAGE_FILTER} {_PAGE_END}) AS page
"""
_VERSION_SQL = "SELECT version FROM vms_version"
# The watcher's columns (_watch_whole unpacks them in this order); the address as text.
_WATCH_COLUMNS = "name, node, mac, host(ip) AS ip, ip_state, state, created_at"
_WATCH_WHOLE_SQL = f"SELECT {_WATCH_COLUMNS} FROM vms WHERE state = ANY(%s)"
# Rows changed and rows deleted after a version, in version order (a tombstone's node is NULL).
_WATCH_CHANGED_SQL = f"""
SELECT * FROM (
    SELECT row_version, {_WATCH_COLUMNS} FROM vms WHERE row_version > %(since)s
    UNION ALL
    SELECT row_version, name, NULL, NULL, NULL, NULL, NULL, NULL
    FROM vms_gone WHERE row_version > %(since)s
) AS changed ORDER BY row_version
"""
CACHED_LISTS = 64  # the most API lists (project, filters, page) a store keeps


def _json_text(sql: str) -> str:
    """A value as JSON text (json.dumps' escaping for ASCII text: see _ascii_json), null for
    NULL."""
    return f"coalesce(to_json({sql})::text, 'null')"


def _json_number(column: str) -> str:
    return f"coalesce({column}::text, 'null')"


def _utc_json(column: str) -> str:
    """A timestamp as `vmctl list -o json` writes it: Python's isoformat in UTC, +00:00 as Z, the
    microseconds only when there are any (one to_char: the cheapest form found)."""
    return f"""coalesce('"' || replace(to_char({column} AT TIME ZONE 'UTC',
                                             'YYYY-MM-DD"T"HH24:MI:SS.US'), '.000000', '')
                        || 'Z"', 'null')"""


# The keys and values of output.record, in its order, as SQL making each value's JSON text.
# abbrev(ip) is inet's output, which psycopg loads: the address, its prefix unless it is /32.
_LIST_JSON_FIELDS = [
    ("name", _json_text("name")),
    ("node", _json_text("node")),
    ("state", _json_text("state")),
    ("ram_mb", _json_number("ram_mb")),
    ("cpu", _json_number("cpu")),
    ("disk_gb", _json_number("disk_gb")),
    ("root_gb", _json_number("root_gb")),
    ("image", _json_text("image")),
    ("mac", _json_text("mac")),
    ("ip", _json_text("abbrev(ip)")),
    ("ip_state", _json_text("ip_state")),
    ("group", _json_text("group_name")),
    ("project", _json_text("project")),
    ("created_at", _utc_json("created_at")),
    ("updated_at", _utc_json("updated_at")),
]
# Each row as the text `vmctl list -o json` writes for it (json.dumps of output.record, indent 2,
# as an element of the list), built by PostgreSQL with one format() a row (a third cheaper than
# concatenating the pieces): 100,000 VMs stream through the CLI at about the speed of the pipe.
# (%%s: this query has psycopg parameters, which turn %% into %.)
_LIST_JSON_TEMPLATE = (
    "  {\\n" + ",\\n".join(f'    "{key}": %%s' for key, _ in _LIST_JSON_FIELDS) + "\\n  }"
)
_LIST_JSON_SQL = f"""
    SELECT format(E'{_LIST_JSON_TEMPLATE}', {", ".join(sql for _, sql in _LIST_JSON_FIELDS)})
    FROM vms WHERE {_PAGE_FILTER} {_PAGE_END}
"""


def _ascii_json(text: str) -> str:
    """A row's text as json.dumps writes it: PostgreSQL's to_json leaves non-ASCII characters
    as they are, json.dumps (ensure_ascii) escapes them. vmctl validates names as ASCII, so this
    is for rows written by other means; the rest pass untouched."""
    if text.isascii():
        return text
    import json
    import textwrap

    return textwrap.indent(json.dumps(json.loads(text), indent=2), "  ")


ROWS_PER_FETCH = 1000  # a streamed list holds this many rows at a time
CHUNKS_SINCE = 170000  # the libpq that sends rows in chunks (older ones: one by one)


def _list_params(
    node: str | None,
    state: str | None,
    project: str | None,
    limit: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    if state is not None and state not in STATES:
        raise InvalidInput("state", f"must be one of {', '.join(STATES)}, not {state!r}")
    return {"node": node, "state": state, "project": project, "limit": limit, "after": after}


def node_usage(conn: Connection) -> list[NodeUsage]:
    """Per node that has VMs, what they take, ordered by node name: read from the sums that a
    trigger keeps per node and group (schema 0008), one row each, however many VMs there are."""
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


def _watch_target(row: dict[str, Any]) -> WatchTarget:
    return _target(
        row["name"], row["node"], row["mac"], row["ip"], row["ip_state"], row["created_at"]
    )


def _target(
    name: str, node: str, mac: str, ip: Any, ip_state: str | None, created_at: datetime
) -> WatchTarget:
    """A WatchTarget taking as little memory as it can: the strings many VMs share (node,
    ip_state) interned, the address as text."""
    return WatchTarget(
        name,
        sys.intern(node),
        mac.lower(),
        None if ip is None else str(ip),
        None if ip_state is None else sys.intern(ip_state),
        utc(created_at),
    )


def _watch_whole(conn: Connection, states: Sequence[str]) -> list[WatchTarget]:
    """Every VM in ``states``, read through a server-side cursor 5,000 rows at a time as
    tuples: the watcher's memory never holds 100,000 rows as dicts at once."""
    found: list[WatchTarget] = []
    with conn.cursor(name="vmctl_watch_whole", row_factory=psycopg.rows.tuple_row) as cursor:
        cursor.execute(_WATCH_WHOLE_SQL, (list(states),))
        while rows := cursor.fetchmany(5000):
            found += [_target(n, node, mac, ip, st, at) for n, node, mac, ip, st, _s, at in rows]
    return found


def _free_address(conn: Connection, pool: AddressPool, node: str) -> IPv4Address:
    """Called under the claim lock: the address the next VM of ``pool`` gets."""
    taken = [
        row["ip"]
        for row in conn.execute(
            """SELECT reserved_ip AS ip FROM vms WHERE ip_pool = %(pool)s
               UNION ALL SELECT move_ip FROM vms WHERE move_ip_pool = %(pool)s""",
            {"pool": pool.key},
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


def _insert(conn: Connection, vm: NewVm, values: dict[str, Any]) -> VmRecord:
    """Insert the row of a claimed VM; ``values`` adds node, host_key, pool and ip."""
    try:
        row = conn.execute(_INSERT_SQL, {**asdict(vm), **values}).fetchone()
    except psycopg.errors.UniqueViolation as e:
        raise Conflict(f"a VM named {vm.name} exists already") from e
    except psycopg.errors.CheckViolation as e:
        constraint = e.diag.constraint_name or "vms"
        field = constraint.removeprefix("vms_").removesuffix("_check")
        raise InvalidInput(field, "not accepted by the database") from e
    assert row is not None
    return vm_record(row)


class VmsMixin(StoreBase):
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

        The claim has an id of its own (schema 0012): when a failover leaves its COMMIT's
        outcome unknown, the row is looked up by that id on the new primary, so a claim that
        was made is a success (not "the name is taken") and one that was not is made again.
        """
        claim_id = uuid.uuid4()

        def work(conn: Connection) -> VmRecord:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (db.CLAIM_LOCK_KEY,))
            row = conn.execute("SELECT node FROM vms WHERE name = %s", (vm.name,)).fetchone()
            if row is not None:
                raise Conflict(f"a VM named {vm.name} exists already (on node {row['node']})")
            node = choose(node_usage(conn))
            pool = pool_of(node)
            address = None if pool is None else _free_address(conn, pool, node)
            return _insert(
                conn,
                vm,
                {
                    "node": node,
                    "host_key": host_key,
                    "pool": None if pool is None else pool.key,
                    "ip": address,
                    "claim_id": claim_id,
                },
            )

        def confirm(conn: Connection) -> VmRecord | None:
            row = conn.execute("SELECT * FROM vms WHERE claim_id = %s", (claim_id,)).fetchone()
            return None if row is None else vm_record(row)

        return self._run(work, confirm)

    def get(self, name: str) -> VmRecord:
        row = self._run(
            lambda c: c.execute("SELECT * FROM vms WHERE name = %s", (name,)).fetchone()
        )
        if row is None:
            raise NotFound(f"no VM named {name}")
        return vm_record(row)

    def list(
        self,
        node: str | None = None,
        state: str | None = None,
        project: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> builtins.list[VmRecord]:
        """VMs ordered by name, optionally only those on ``node``, in ``state``, of ``project``;
        a page of them: the first ``limit`` whose names come after ``after``."""
        sql = f"SELECT * FROM vms WHERE {_PAGE_FILTER} {_PAGE_END}"
        params = _list_params(node, state, project, limit, after)
        rows = self._run(lambda c: c.execute(sql, params).fetchall())
        return [vm_record(row) for row in rows]

    def count(
        self, node: str | None = None, state: str | None = None, project: str | None = None
    ) -> int:
        """How many VMs ``list`` would give without a limit."""
        sql = f"SELECT count(*) AS n FROM vms WHERE {_LIST_FILTER}"
        row = self._run(lambda c: c.execute(sql, _list_params(node, state, project)).fetchone())
        return int(row["n"]) if row else 0

    def vms_version(self) -> int:
        """The counter of schema 0007, moved by every row of vms changed (~0.1 ms)."""
        row = self._run(lambda c: c.execute(_VERSION_SQL).fetchone())
        return int(row["version"]) if row else 0

    def watch_changes(self, since: int | None, states: Sequence[str]) -> WatchChanges:
        """The watcher's read (schema 0009): only the rows and tombstones newer than ``since``,
        by an index; every VM in ``states`` when it must read from scratch."""

        def read(conn: Connection) -> WatchChanges:
            # One snapshot for the version and the rows (see schema 0009).
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            head = conn.execute("SELECT version, forgotten FROM vms_version").fetchone()
            version, forgotten = (int(head["version"]), int(head["forgotten"])) if head else (0, 0)
            if since is None or since < forgotten:
                return WatchChanges(version, True, _watch_whole(conn, states), [])
            rows = conn.execute(_WATCH_CHANGED_SQL, {"since": since}).fetchall()
            latest: dict[str, dict[str, Any] | None] = {}
            for row in rows:  # by version: the last word on each name wins
                latest[row["name"]] = row if row["node"] is not None else None
            vms = [_watch_target(r) for r in latest.values() if r and r["state"] in states]
            gone = [name for name, r in latest.items() if r is None or r["state"] not in states]
            return WatchChanges(version, False, vms, gone)

        return self._run(read)

    def list_json(
        self,
        node: str | None = None,
        state: str | None = None,
        project: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Iterator[str]:
        """``list`` as `vmctl list -o json` writes each element, streamed: PostgreSQL sends the
        rows as it makes them (libpq's chunked mode: ROWS_PER_FETCH rows in memory at a time),
        so making them overlaps with writing them. The connection is held until the iterator is
        exhausted or closed (closing it early cancels the query)."""
        params = _list_params(node, state, project, limit, after)
        size = ROWS_PER_FETCH if psycopg.pq.version() >= CHUNKS_SINCE else 1
        window = retry.Window(self.failover_s)
        while True:
            try:
                yield from self._stream_list_json(params, size)
                return
            except retry.Lost as lost:  # before the first row: nothing was given, start again
                pause = window.next_pause(lost)
                if pause is None:
                    raise db.unreachable(self._url, lost.error) from lost.error
                time.sleep(pause)

    def _stream_list_json(self, params: dict[str, Any], size: int) -> Iterator[str]:
        """One try of list_json: retry.Lost when no connection could be had, or the one had
        was lost before the first row; StoreUnavailable when it was lost later."""
        pool, conn = self._getconn_or_lost()
        given = False
        try:
            cursor = conn.cursor(row_factory=psycopg.rows.tuple_row)
            try:
                for (text,) in cursor.stream(_LIST_JSON_SQL, params, size=size):
                    given = True
                    yield _ascii_json(text)
            except psycopg.OperationalError as e:
                if conn.closed or conn.broken or _shutting_down(e):
                    if not given:
                        raise retry.Lost(e, committing=False) from e
                    raise db.unreachable(self._url, e) from e
                raise
        finally:
            pool.putconn(conn)

    def list_contract_page(
        self,
        project: str,
        node: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> tuple[str, int, str | None]:
        """A page of the HTTP API's list ([{Name, RAM, CPU, Disk, IP, CreatedAt}], what
        ``vmctl.api.vm_out`` makes of each record) as JSON text built by PostgreSQL, how many VMs
        it holds, and the last one's name.

        Kept, with the version of the vms table it was built at (schema 0007), and given again
        while that version has not moved: asking for the version is ~300 times cheaper than
        building 10,000 VMs' JSON. The version and the list are read in one statement (one
        snapshot), so a kept list is never older than its version."""
        params = _list_params(node, state, project, limit, after)
        key = (project, node, state, limit, after)

        def work(conn: Connection) -> tuple[str, int, str | None]:
            kept = self._lists.get(key)
            if kept is not None:
                row = conn.execute(_VERSION_SQL).fetchone()
                if row is not None and row["version"] == kept[0]:
                    return kept[1]
            row = conn.execute(_CONTRACT_SQL, params).fetchone()
            assert row is not None
            page = (str(row["body"]), int(row["n"]), row["last"])
            with self._lists_lock:
                self._lists[key] = (row["version"], page)
                while len(self._lists) > CACHED_LISTS:
                    self._lists.pop(next(iter(self._lists)))
            return page

        return self._run(work)

    def set_state(self, name: str, state: str) -> VmRecord:
        if state not in STATES:
            raise ValueError(f"unknown VM state {state!r}")
        return self._update(name, "state = %(state)s", {"state": state})

    def resize(
        self,
        name: str,
        cpu: int,
        ram_mb: int,
        disk_gb: int,
        check: Callable[[builtins.list[NodeUsage]], None],
    ) -> VmRecord:
        """Record new sizes for VM ``name`` once ``check`` accepts them: it sees every node's
        usage under the claim lock (as claims do), so a resize and a create never both take the
        last room of a node."""

        def work(conn: Connection) -> VmRecord:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (db.CLAIM_LOCK_KEY,))
            check(node_usage(conn))
            row = conn.execute(
                """UPDATE vms SET cpu = %s, ram_mb = %s, disk_gb = %s, updated_at = now()
                   WHERE name = %s RETURNING *""",
                (cpu, ram_mb, disk_gb, name),
            ).fetchone()
            if row is None:
                raise NotFound(f"no VM named {name}")
            return vm_record(row)

        return self._run(work)

    def begin_move(
        self,
        name: str,
        node: str,
        check: Callable[[builtins.list[NodeUsage]], None],
        pool: AddressPool | None,
    ) -> VmRecord:
        """Take room on ``node`` (once ``check`` accepts it, under the claim lock) and, for a
        managed network, an address of ``pool``, for the move of VM ``name`` there."""

        def work(conn: Connection) -> VmRecord:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (db.CLAIM_LOCK_KEY,))
            conn.execute(
                """UPDATE vms SET move_node = NULL, move_ip_pool = NULL, move_ip = NULL
                   WHERE name = %s""",
                (name,),
            )  # a move that died before it ended
            check(node_usage(conn))
            address = None if pool is None else _free_address(conn, pool, node)
            row = conn.execute(
                """UPDATE vms SET move_node = %s, move_ip_pool = %s, move_ip = %s
                   WHERE name = %s RETURNING *""",
                (node, None if pool is None else pool.key, address, name),
            ).fetchone()
            if row is None:
                raise NotFound(f"no VM named {name}")
            return vm_record(row)

        return self._run(work)

    def end_move(self, name: str, done: bool) -> VmRecord:
        """The move is over: ``done``, the VM is on its new node with its new address (the old
        one given back, the address to be confirmed); else nothing changed."""

        def work(conn: Connection) -> VmRecord:
            old = conn.execute(
                "SELECT ip_pool, reserved_ip, move_node FROM vms WHERE name = %s FOR UPDATE",
                (name,),
            ).fetchone()
            if old is None:
                raise NotFound(f"no VM named {name}")
            if done and old["move_node"] is not None:
                row = conn.execute(_FINISH_MOVE_SQL, (name,)).fetchone()
                if old["reserved_ip"] is not None:
                    conn.execute(
                        """INSERT INTO released_addresses (ip_pool, ip) VALUES (%s, %s)
                           ON CONFLICT (ip_pool, ip) DO UPDATE SET released_at = now()""",
                        (old["ip_pool"], old["reserved_ip"]),
                    )
            else:
                row = conn.execute(
                    """UPDATE vms SET move_node = NULL, move_ip_pool = NULL, move_ip = NULL
                       WHERE name = %s RETURNING *""",
                    (name,),
                ).fetchone()
            assert row is not None
            return vm_record(row)

        return self._run(work)

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
        return vm_record(row)

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

        def confirm(conn: Connection) -> bool | None:
            # an unknown outcome: the row gone means this delete took it (the caller holds the
            # VM's lock, so no other operation was deleting it)
            row = conn.execute("SELECT 1 FROM vms WHERE name = %s", (name,)).fetchone()
            return True if row is None else None

        return self._run(work, confirm)

    def usage(self) -> builtins.list[NodeUsage]:
        """Per node that has VMs, what they take, ordered by node name."""
        return self._run(node_usage)
