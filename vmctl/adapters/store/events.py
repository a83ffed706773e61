"""The event log: what was done to which VM, by whom, and how it went."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from vmctl.adapters.store.base import StoreBase, utc
from vmctl.core.records import RESULTS


class EventsMixin(StoreBase):
    def add_event(
        self, vm: str | None, node: str | None, action: str, result: str, detail: dict[str, Any]
    ) -> int:
        """Append to the event log (the actor is this store's); the event's id."""
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

    def events(self, vm: str) -> list[dict[str, Any]]:
        """The events of one VM, oldest first: dicts of id, at (UTC), vm, node, actor, action,
        result, detail."""
        rows = self._run(
            lambda c: c.execute(
                """SELECT id, at, vm, node, actor, action, result, detail FROM events
                   WHERE vm = %s ORDER BY at, id""",
                (vm,),
            ).fetchall()
        )
        return [{**row, "at": utc(row["at"])} for row in rows]
