"""The event log: what was done to which VM, by whom, and how it went."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from vmctl.adapters.store.base import StoreBase, utc
from vmctl.core.records import RESULTS


class EventsMixin(StoreBase):
    def add_event(
        self, vm: str | None, node: str | None, action: str, result: str, detail: dict[str, Any]
    ) -> int:
        """Append to the event log (the actor is this store's); the event's id.

        Not idempotent, and run again when a failover leaves its COMMIT's outcome unknown: the
        log may then hold the event twice (with two ids). A duplicate line in an audit log is
        the lesser harm; failing the operation that did its work, or losing the line, would
        be worse."""
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

    def events(
        self, vm: str | None = None, since: datetime | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Events oldest first (of one VM, at or after ``since``; the newest ``limit`` of them):
        dicts of id, at (UTC), vm, node, actor, action, result, detail."""
        rows = self._run(
            lambda c: c.execute(
                """SELECT * FROM (
                       SELECT id, at, vm, node, actor, action, result, detail FROM events
                       WHERE (%(vm)s::text IS NULL OR vm = %(vm)s)
                         AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)
                       ORDER BY at DESC, id DESC LIMIT %(limit)s) newest
                   ORDER BY at, id""",
                {"vm": vm, "since": since, "limit": limit},
            ).fetchall()
        )
        return [{**row, "at": utc(row["at"])} for row in rows]
