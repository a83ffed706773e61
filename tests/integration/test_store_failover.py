"""Riding out a lost PostgreSQL, against the lab's PostgreSQL: multi-host URLs, retries within
the failover window, and writes whose COMMIT's outcome is unknown (a claim is never made twice,
a success never turns into "the name is taken").

The connection is cut where a failover cuts it by a proxy of the test's own (tests/integration/
pgproxy.py): before the COMMIT reaches the server, or after the server committed but before its
answer reaches vmctl. The Patroni lab test (tests/e2e/test_patroni_failover.py) does it for real.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import eventually
from tests.integration.pgproxy import PgProxy
from tests.integration.test_store import _closed_port, _vm, lab_pg_url, pg_url  # noqa: F401
from vmctl.adapters import db
from vmctl.adapters.store import PgStore
from vmctl.adapters.store.locks import VM_LOCK_CLASS
from vmctl.core.errors import Busy, StoreUnavailable

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(pg_url: str) -> Iterator[PgProxy]:  # noqa: F811
    port = int(conninfo_to_dict(pg_url).get("port") or 5432)
    p = PgProxy(port)
    yield p
    p.close()


def _through(url: str, proxy: PgProxy, first_port: int | None = None) -> str:
    """``url`` reached through the proxy; with ``first_port``, as a multi-host URL whose first
    host is 127.0.0.1:first_port (libpq tries it, then the proxy)."""
    ports = f"{first_port},{proxy.port}" if first_port else str(proxy.port)
    hosts = "127.0.0.1,127.0.0.1" if first_port else "127.0.0.1"
    return make_conninfo(
        url, host=hosts, port=ports, target_session_attrs="read-write", sslmode="disable"
    )


def _rows(url: str, name: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM vms WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


def test_a_multi_host_url_is_described_whole_and_migrates_and_serves(
    pg_url: str,  # noqa: F811
    proxy: PgProxy,
) -> None:
    closed = _closed_port()
    url = _through(pg_url, proxy, first_port=closed)
    password = str(conninfo_to_dict(pg_url)["password"])
    assert db.describe(url) == f"127.0.0.1:{closed},127.0.0.1:{proxy.port}"
    assert "0012_claim_id" in db.upgrade(url)  # yoyo finds the live host as libpq does
    with PgStore(url) as store:
        assert store.failover_s == 30  # several hosts: a failover is expected there
        assert store.claim(_vm("multi"), lambda _u: "node-a").node == "node-a"
    bad = make_conninfo(url, port=f"{closed},{_closed_port()}")
    with PgStore(bad, failover_s=0) as store, pytest.raises(StoreUnavailable) as info:
        store.ping()
    assert str(info.value).startswith(f"PostgreSQL at 127.0.0.1:{closed},127.0.0.1:")
    assert password not in str(info.value)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_claim_whose_commit_is_cut_is_made_once_and_reported_made(
    pg_url: str,  # noqa: F811
    proxy: PgProxy,
    when: str,
) -> None:
    db.upgrade(pg_url)
    with PgStore(_through(pg_url, proxy), failover_s=10) as store:
        store.ping()
        proxy.cut(when)  # type: ignore[arg-type]
        record = store.claim(_vm(f"cut-{when}"), lambda _u: "node-a")
        assert proxy.cuts == 1
        assert record.name == f"cut-{when}" and record.state == "creating"
        assert store.get(f"cut-{when}") == record
    assert _rows(pg_url, f"cut-{when}") == 1


def test_without_a_window_a_claim_cut_after_commit_is_found_not_taken(
    pg_url: str,  # noqa: F811
    proxy: PgProxy,
) -> None:
    """One host, no failover window (the single-server contract): the claim's own id still
    tells a committed claim from a lost one."""
    db.upgrade(pg_url)
    with PgStore(_through(pg_url, proxy)) as store:
        assert store.failover_s == 0
        store.ping()
        proxy.cut("after")
        with pytest.raises(StoreUnavailable, match="whether the change was saved is unknown"):
            store.claim(_vm("cut-once"), lambda _u: "node-a")
    assert _rows(pg_url, "cut-once") == 1  # it was saved; the caller was told it may have been


def test_a_delete_whose_commit_is_cut_after_it_says_there_was_one(
    pg_url: str,  # noqa: F811
    proxy: PgProxy,
) -> None:
    db.upgrade(pg_url)
    with PgStore(_through(pg_url, proxy), failover_s=10) as store:
        store.claim(_vm("gone"), lambda _u: "node-a")
        proxy.cut("after")
        assert store.delete("gone") is True
        assert proxy.cuts == 1
    assert _rows(pg_url, "gone") == 0


def test_an_outage_shorter_than_the_window_is_ridden_out(
    pg_url: str,  # noqa: F811
    proxy: PgProxy,
) -> None:
    db.upgrade(pg_url)
    with PgStore(_through(pg_url, proxy), failover_s=10) as store:
        store.claim(_vm("before-outage"), lambda _u: "node-a")
        proxy.refuse(3)
        started = time.monotonic()
        store.claim(_vm("during-outage"), lambda _u: "node-a")
        took = time.monotonic() - started
        assert [vm.name for vm in store.list()] == ["before-outage", "during-outage"]
    assert 2.5 < took < 8, took


def test_an_outage_longer_than_the_window_is_reported_when_it_closes(
    pg_url: str,  # noqa: F811
    proxy: PgProxy,
) -> None:
    db.upgrade(pg_url)
    with PgStore(_through(pg_url, proxy), failover_s=2) as store:
        store.ping()
        proxy.refuse(60)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="is unreachable"):
            store.claim(_vm("never"), lambda _u: "node-a")
        took = time.monotonic() - started
    assert 1.5 < took < 8, took
    assert _rows(pg_url, "never") == 0


def test_a_wrong_password_is_reported_at_once_whatever_the_window(
    pg_url: str,  # noqa: F811
    proxy: PgProxy,
) -> None:
    url = make_conninfo(_through(pg_url, proxy, first_port=_closed_port()), password="wrong")
    started = time.monotonic()
    with PgStore(url, failover_s=30) as store, pytest.raises(StoreUnavailable) as info:
        store.ping()
    assert time.monotonic() - started < 6
    assert "password authentication failed" in str(info.value)


def test_a_streamed_list_rides_out_an_outage_before_its_first_row(
    pg_url: str,  # noqa: F811
    proxy: PgProxy,
) -> None:
    db.upgrade(pg_url)
    with PgStore(_through(pg_url, proxy), failover_s=10) as store:
        store.claim(_vm("listed"), lambda _u: "node-a")
        proxy.refuse(2)
        started = time.monotonic()
        rows = list(store.list_json())
        assert len(rows) == 1 and '"name": "listed"' in rows[0]
    assert 1.5 < time.monotonic() - started < 8


def test_a_vms_lock_waits_out_an_outage_shorter_than_the_window(
    pg_url: str,  # noqa: F811
    proxy: PgProxy,
) -> None:
    db.upgrade(pg_url)
    with PgStore(_through(pg_url, proxy), failover_s=10) as store:
        proxy.refuse(2)
        started = time.monotonic()
        with store.vm_lock("locked", "test", timeout=0):
            took = time.monotonic() - started
    assert 1.5 < took < 8, took


def _holder(url: str, name: str) -> str | None:
    """The application_name of the session holding VM ``name``'s lock (None: nobody)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            """SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s
                 AND l.objid = hashtext(%s)::oid AND l.objsubid = 2""",
            (VM_LOCK_CLASS, name),
        ).fetchone()
    return None if row is None else str(row[0])


def test_a_held_lock_whose_connection_is_lost_is_taken_again(
    pg_url: str,  # noqa: F811
    proxy: PgProxy,
) -> None:
    name = f"keeper-{secrets.token_hex(4)}"
    with PgStore(_through(pg_url, proxy), failover_s=10, actor="holder@test") as store:
        with store.vm_lock(name, "stop", 0):
            assert (_holder(pg_url, name) or "").startswith(f"vmctl stop {name}")
            proxy.refuse(2)  # the session ends: PostgreSQL lets the lock go
            eventually("the lock let go", lambda: _holder(pg_url, name) is None, timeout=10)
            eventually("the lock taken again", lambda: _holder(pg_url, name), timeout=15)
            with (
                PgStore(pg_url, actor="other@test") as other,
                pytest.raises(Busy),
                other.vm_lock(name, "start", 0),
            ):
                pass  # pragma: no cover - it must be busy
        assert _holder(pg_url, name) is None  # let go at the end, as ever


def test_a_lock_another_took_while_its_connection_was_lost_is_said_lost(
    pg_url: str,  # noqa: F811
    proxy: PgProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"keeper-{secrets.token_hex(4)}"
    with (
        PgStore(_through(pg_url, proxy), failover_s=10) as store,
        store.vm_lock(name, "stop", 0),
        psycopg.connect(pg_url, autocommit=True) as thief,
    ):
        proxy.refuse(3)
        take = "SELECT pg_try_advisory_lock(%s, hashtext(%s))"
        eventually(
            "another takes it", lambda: thief.execute(take, (VM_LOCK_CLASS, name)).fetchone()[0]
        )
        eventually("the keeper says so", lambda: "lock lost" in caplog.text, timeout=15)
    assert [r.message for r in caplog.records].count("lock lost") == 2  # the keeper's, the exit's
