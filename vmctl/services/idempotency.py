"""Requests with an ``Idempotency-Key``: the first one with a key runs, every retry of it (on any
replica, at once or later) gets the first one's answer, and the key with another request is
refused.

The first request holds the key (``IdempotencyStore.idempotency_hold``) while it runs, and keeps
its answer when it is final: a success or a refusal of what was asked (409, 404...). Bad input
(400: refused before anything was done) and a server error (500 and up: PostgreSQL or a node
unreachable, a bug) keep nothing, so a retry with the key runs again (as Stripe does: the client
may correct the body and send it with the same key). Another
request with the key waits for the holder (at most ``wait_s``; then Busy, HTTP 409), then gets the
kept answer, or runs itself when the holder kept none (it failed, or died: its lock went with it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from vmctl.core import idempotency
from vmctl.core.errors import StoreUnavailable
from vmctl.core.idempotency import Answer, KeptAnswer, KeyReused
from vmctl.services.ports import IdempotencyStore


def kept_for_retries(status: int) -> bool:
    """Whether an answer of ``status`` is final, kept for the retries of its request."""
    return status < 500 and status != 400


@dataclass
class IdempotencyService:
    store: IdempotencyStore
    wait_s: float = idempotency.WAIT_S
    ttl_s: float = idempotency.TTL_S
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("vmctl.idempotency"))

    def run(
        self, scope: str, header: str | None, fingerprint: str, work: Callable[[], Answer]
    ) -> Answer:
        """``work()``'s answer, run once per key of ``scope`` (``header``: the Idempotency-Key
        as sent; None: no key, ``work`` simply runs). InvalidInput for a malformed key, KeyReused
        for a key used with another ``fingerprint``, Busy when the first request with the key is
        still running after ``wait_s``. An exception of ``work`` keeps nothing."""
        if header is None:
            return work()
        key = idempotency.parse_key(header)
        with self.store.idempotency_hold(scope, key, self.wait_s):
            kept = self.store.kept_answer(scope, key)
            if kept is not None:
                if kept.fingerprint != fingerprint:
                    raise KeyReused(key)
                return Answer(kept.status, kept.body, replayed=True)
            answer = work()
            if not kept_for_retries(answer.status):
                return answer
            try:
                self.store.keep_answer(
                    scope, key, KeptAnswer(fingerprint, answer.status, answer.body), self.ttl_s
                )
            except StoreUnavailable as e:
                # the work is done: its answer is the truth, even if a retry will not find it
                self.log.warning("answer not kept for its idempotency key: %s", e)
            return answer
