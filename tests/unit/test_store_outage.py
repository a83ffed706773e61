"""Which PostgreSQL errors mean "the server went away" (an outage, exit 6), not a bug."""

from __future__ import annotations

import psycopg
import pytest

from vmctl.adapters.store.base import _shutting_down

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
        (psycopg.errors.CrashShutdown("crash"), True),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), True),
        (psycopg.errors.DeadlockDetected("deadlock"), False),
        (psycopg.errors.QueryCanceled("canceled"), False),
    ],
)
def test_a_server_shutting_down_is_an_outage(error: psycopg.Error, outage: bool) -> None:
    assert _shutting_down(error) is outage
