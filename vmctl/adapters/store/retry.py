"""Riding out a PostgreSQL failover: which failures are worth waiting out, and for how long.

A call whose connection is lost, or that finds no server to connect to, tries again with a
growing pause (0.1 s doubling to 2 s, jittered so that an API's threads do not come back in
step) until its window closes: long enough for Patroni to promote a replica (ttl + loop_wait,
~10-30 s). A window of 0 keeps vmctl's single-server contract: an outage is reported at once,
with one immediate retry for a connection that died before COMMIT.

Why not tenacity: the loop is a dozen lines, but what happens after a failure depends on the
failure (COMMIT sent or not, a confirm step to run first, an error that waiting cannot cure);
tenacity would express that as exceptions carrying state through its retry predicates, and the
store would import a library to save nothing. ``Window`` keeps the one piece of state a retry
needs (the deadline), and is tested on its own.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from vmctl.adapters import db
from vmctl.core.errors import ConfigError

FAILOVER_S = 30.0  # default window for a URL with several hosts (Patroni: ttl 30 by default)
FIRST_PAUSE_S = 0.1
MAX_PAUSE_S = 2.0

# libpq's words for failures that waiting does not cure (a wrong password, an unknown database,
# a refusal by pg_hba.conf, TLS set up wrong): reported at once, whatever the window.
_PERMANENT = (
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "password",
    "certificate",
    "invalid",
)


class Lost(Exception):
    """The connection could not be had, or was lost during a call."""

    def __init__(
        self, error: Exception, committing: bool, connected: bool = True, permanent: bool = False
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.committing = committing  # COMMIT was sent: the outcome is unknown
        self.connected = connected  # False: no connection was had at all
        self.permanent = permanent


def permanent(error: Exception) -> bool:
    """Whether a failure to connect is one that waiting will not cure."""
    text = str(error).lower()
    return any(word in text for word in _PERMANENT)


def default_window(url: str) -> float:
    """FAILOVER_S for a URL naming several hosts (libpq finds the primary among them), else 0."""
    try:
        return FAILOVER_S if db.hosts(url) > 1 else 0.0
    except ConfigError:
        return 0.0  # a malformed URL: the first call says so (building a store costs nothing)


class Window:
    """The time a call may spend retrying, from its first failure on."""

    def __init__(
        self,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.seconds = seconds
        self._clock = clock
        self._jitter = jitter
        self._deadline: float | None = None
        self._pause = FIRST_PAUSE_S
        self._tries = 0

    @property
    def open(self) -> bool:
        return self.seconds > 0

    def next_pause(self, lost: Lost) -> float | None:
        """How long to sleep before trying again after ``lost``; None: give up (report it)."""
        self._tries += 1
        if lost.permanent:
            return None
        if not self.open:
            # the single-server contract: one immediate retry for a connection that died
            # before COMMIT, nothing else
            ok = self._tries == 1 and lost.connected and not lost.committing
            return 0.0 if ok else None
        now = self._clock()
        if self._deadline is None:
            self._deadline = now + self.seconds
        pause = self._jitter(self._pause / 2, self._pause)
        if now + pause > self._deadline:
            return None
        self._pause = min(self._pause * 2, MAX_PAUSE_S)
        return pause
