"""Heartbeats of long-running processes (watch-ip, serve): who is alive."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from vmctl.adapters.store.base import StoreBase


class HeartbeatsMixin(StoreBase):
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

    def alive(self, kind: str, within_s: float) -> list[str]:
        """The processes of ``kind`` that said they were alive in the last ``within_s`` s."""
        rows = self._run(
            lambda c: c.execute(
                """SELECT process FROM heartbeats
                   WHERE kind = %s AND at > now() - make_interval(secs => %s) ORDER BY process""",
                (kind, within_s),
            ).fetchall()
        )
        return [row["process"] for row in rows]
