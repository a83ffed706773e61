"""watch-ip's reconcile thread: `vmctl reconcile` in report mode every few minutes (each new
drift item becomes an event, once), and, as soon as a delete waits for its node, a pass that
finishes it (a user asked for that delete; nothing else is repaired here)."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from vmctl.core.drift import KINDS, STUCK_DELETING
from vmctl.core.logfields import fields
from vmctl.services.ports import Cache, Connect, NoMetrics, Store, WatchMetrics

if TYPE_CHECKING:
    from vmctl.core.inventory import Inventory

PENDING_DELETES_S = 10.0  # how often the thread looks for deletes waiting for a node


class DriftWatch:
    def __init__(
        self,
        inventory: Inventory,
        store: Store,
        cache: Cache,
        connect: Connect,
        log: logging.Logger,
        actor: str,
        metrics: WatchMetrics | None = None,
    ) -> None:
        self.inventory = inventory
        self.store = store
        self.cache = cache
        self.connect = connect  # connections of its own: address learning never waits for it
        self.log = log
        self.actor = actor
        self.metrics: WatchMetrics = metrics or NoMetrics()
        self._known: set[tuple[str, str | None, str]] = set()

    def report_once(self) -> list[str]:
        """One report: record the drift not seen in the previous pass as ``drift`` events,
        finish the deletes left ``deleting``; the kinds recorded."""
        from vmctl.services.reconcile import Reconciler

        reconciler = Reconciler(
            self.inventory, self.store, self.cache, self.connect, actor=self.actor
        )
        outcome = reconciler.report()
        counts = dict.fromkeys(KINDS, 0)
        for item in outcome.drift:
            counts[item.kind] = counts.get(item.kind, 0) + 1
        self.metrics.drift(counts)
        known = {k for k in self._known if k[1] in outcome.unreachable}  # not judged now
        recorded = []
        for item in outcome.drift:
            known.add(item.key)
            if item.key in self._known:
                continue
            detail = {
                "kind": item.kind,
                "subject": item.subject,
                "detail": item.detail,
                "fix": item.fix,
            }
            self.store.add_event(item.vm, item.node, "drift", "failed", detail)
            self.log.warning("drift", extra=fields(kind=item.kind, node=item.node, vm=item.vm))
            recorded.append(item.kind)
        self._known = known
        for node, error in outcome.unreachable.items():
            self.log.warning("reconcile: node not surveyed", extra=fields(node=node, error=error))
        pending = [d for d in outcome.drift if d.kind == STUCK_DELETING]
        for action in reconciler.apply(pending):
            self.log.info(
                "pending delete",
                extra=fields(vm=action.drift.vm, result=action.result, detail=action.detail),
            )
        return recorded

    def loop(self, stop: threading.Event, every: float) -> None:
        """A report every ``every`` s; in between, every PENDING_DELETES_S, a pass as soon as a
        delete waits for its node (so it completes within seconds of the node answering)."""
        next_report = time.monotonic()
        while not stop.is_set():
            due = time.monotonic() >= next_report
            try:
                if due or self.store.list(state="deleting"):
                    self.report_once()
                    if due:
                        next_report = time.monotonic() + every
            except Exception as exc:  # a pass that fails is logged; the next one runs
                self.log.warning("reconcile failed", extra=fields(error=str(exc)))
            stop.wait(min(PENDING_DELETES_S, every))
