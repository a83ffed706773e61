"""Backoff for the watcher's node threads: how long to wait after the latest failure, and which
failure and which recovery are worth a log line.

Why not tenacity or stamina: both retry one call until it succeeds and then are done, while our
loops run until ``stop`` is set, a success being just one more turn. The lease follower even
recovers in the middle of an attempt (the first leases of a new stream), and a stream that ends
without an error is a failure too. Stamina sleeps with ``time.sleep`` and adds jitter, so a
stopping watcher would sit out up to 30 s; tenacity can wait on the event
(``sleep_using_event``, ``stop_when_event_set``) but then needs a new ``Retrying`` per run of
failures, callbacks to log the first failure, and a ``RetryError`` to catch at stop: more code
than these lines, and one more dependency.
"""

from __future__ import annotations

import threading

STEPS_S = (1, 2, 4, 8, 16, 30)


class Backoff:
    """The failures in a row of one loop, and the wait each one earns."""

    def __init__(self, steps_s: tuple[float, ...] = STEPS_S) -> None:
        self.steps_s = steps_s
        self.failures = 0

    def failed(self) -> bool:
        """Count a failure: True for the first of a run (the one to log)."""
        self.failures += 1
        return self.failures == 1

    def recovered(self) -> int:
        """End a run of failures: how many there were (0: none, nothing to log)."""
        failures, self.failures = self.failures, 0
        return failures

    def wait(self, stop: threading.Event) -> None:
        """Wait as long as the latest failure earns, or until ``stop`` is set."""
        stop.wait(self.steps_s[min(max(self.failures, 1), len(self.steps_s)) - 1])
