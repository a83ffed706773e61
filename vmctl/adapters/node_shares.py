"""The nodes divided between several `vmctl watch-ip --share` through PostgreSQL advisory locks.

Each watcher holds one connection of its own. On it, a shared advisory lock says "a watcher is
alive" (the live watchers are the holders of that lock: PostgreSQL drops a session's locks the
moment it ends, so a watcher killed is gone from the count at once, and a host cut off is gone once
TCP keepalives give up, ~10 s), and an exclusive advisory lock per node says who watches it. Each
round a watcher gives back what is over its fair share (the nodes divided by the live watchers,
rounded up) and tries to take free nodes up to it. A node is held by one session at most, so never
watched twice; a watcher that loses its connection watches nothing until it has one again.

The locks' first key is the hash of the schema's name: watchers of different installations (or
test schemas) sharing one database never meet.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from vmctl.adapters import db

MEMBER = 0  # the second key of the "alive" lock; a node's is the hash of its name (never 0)
# Give up on a silent peer after ~10 s: idle 4 s, then 3 probes 2 s apart.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 4, "keepalives_interval": 2}
_MEMBERS_SQL = """
SELECT count(*) AS n FROM pg_locks
WHERE locktype = 'advisory' AND granted AND mode = 'ShareLock'
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid = %s::oid AND objid = %s::oid AND objsubid = 2
"""


def _key(text: str) -> int:
    """A signed 32-bit key for ``text``, never MEMBER."""
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big", signed=True)
    return value or 1


class PgNodeShares:
    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.Connection[Any] | None = None
        self._space = 0
        self._held: set[str] = set()

    def balance(self, nodes: Sequence[str]) -> frozenset[str]:
        try:
            conn = self._connection()
            members = conn.execute(_MEMBERS_SQL, (self._space & 0xFFFFFFFF, MEMBER)).fetchone()
            share = math.ceil(len(nodes) / max(1, int(members["n"] if members else 1)))
            for node in sorted(self._held - set(nodes)):
                self._give_back(conn, node)
            for node in sorted(self._held, reverse=True)[: max(0, len(self._held) - share)]:
                self._give_back(conn, node)
            for node in nodes:
                if len(self._held) >= share:
                    break
                if node not in self._held and self._take(conn, node):
                    self._held.add(node)
        except psycopg.Error:
            self.close()  # our locks went with the session: watch nothing until back
        return frozenset(self._held)

    def close(self) -> None:
        self._held.clear()
        if self._conn is not None:
            self._conn.close()  # every lock of the session goes with it
            self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self.close()
        db.check_url(self._url)
        conn = psycopg.connect(
            make_conninfo(self._url, keepalives_count=3, **KEEPALIVES), **db.connection_kwargs()
        )
        row = conn.execute("SELECT current_schema() AS s").fetchone()
        self._space = _key(f"vmctl watch-ip {row['s'] if row else ''}")
        conn.execute("SELECT pg_advisory_lock_shared(%s, %s)", (self._space, MEMBER))
        self._conn = conn
        return conn

    def _take(self, conn: psycopg.Connection[Any], node: str) -> bool:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s, %s) AS got", (self._space, _key(node))
        ).fetchone()
        return bool(row and row["got"])

    def _give_back(self, conn: psycopg.Connection[Any], node: str) -> None:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (self._space, _key(node)))
        self._held.discard(node)
