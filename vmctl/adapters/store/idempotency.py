"""Idempotency keys of the HTTP API: who runs the first request with a key, and its answer.

While a request with a key runs, its replica holds a PostgreSQL session advisory lock on
(scope, key) on a connection of its own, as ``vm_lock`` does for VMs: another request with the key,
on any replica (HAProxy's retry of a create that outlived ``timeout server``), waits for it and
then reads the answer kept. A replica that dies lets go at once, because PostgreSQL ends its
session; so no time bound has to guess how long a create may take before another may run it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.types.json import Json

from vmctl.adapters import db
from vmctl.adapters.store.base import Connection
from vmctl.adapters.store.locks import LocksMixin
from vmctl.core.idempotency import HEADER, KeptAnswer

KEY_LOCK_CLASS = 0x6964  # first half of the advisory lock key ("id"); the second is a hash
EXPIRED_PER_KEEP = 100  # expired rows each keep_answer deletes


class IdempotencyMixin(LocksMixin):
    @contextmanager
    def idempotency_hold(self, scope: str, key: str, timeout: float) -> Iterator[None]:
        """Hold (scope, key) while the block runs; Busy when another request holds it for
        ``timeout`` s more. StoreUnavailable if PostgreSQL does not answer."""
        label = f"vmctl idempotency {scope} by {self.actor}"[:63]
        try:
            # two keys that hash alike share a lock: they wait for each other, nothing more
            with self.hold_lock(
                label,
                (KEY_LOCK_CLASS, f"{scope}\n{key}"),
                timeout,
                lambda _conn: (
                    f"{HEADER} {key!r}: the first request with this key is still running "
                    f"after {timeout:g} s; try again later with the same key"
                ),
                what=f"idempotency key of {scope}",
            ):
                yield
        except psycopg.OperationalError as e:
            raise db.unreachable(self._url, e) from e

    def kept_answer(self, scope: str, key: str) -> KeptAnswer | None:
        """The answer kept for (scope, key); None if there is none or it expired."""
        row = self._run(
            lambda c: c.execute(
                """SELECT fingerprint, status, body FROM idempotency_keys
                   WHERE scope = %s AND key = %s AND expires_at > now()""",
                (scope, key),
            ).fetchone()
        )
        if row is None:
            return None
        return KeptAnswer(row["fingerprint"], int(row["status"]), row["body"])

    def keep_answer(self, scope: str, key: str, answer: KeptAnswer, ttl_s: float) -> None:
        """Keep ``answer`` for (scope, key) for ``ttl_s`` s (replacing an expired one), and
        delete some expired keys."""

        def keep(c: Connection) -> None:
            c.execute(
                """DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
                       SELECT ctid FROM idempotency_keys WHERE expires_at <= now()
                       ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED))""",
                (EXPIRED_PER_KEEP,),
            )
            c.execute(
                """INSERT INTO idempotency_keys
                       (scope, key, fingerprint, status, body, expires_at)
                   VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s))
                   ON CONFLICT (scope, key) DO UPDATE SET
                       fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status,
                       body = EXCLUDED.body, created_at = EXCLUDED.created_at,
                       expires_at = EXCLUDED.expires_at
                   WHERE idempotency_keys.expires_at <= now()""",
                (scope, key, answer.fingerprint, answer.status, Json(answer.body), ttl_s),
            )

        self._run(keep)
