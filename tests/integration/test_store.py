"""The PostgreSQL store and its migrations, against the lab's PostgreSQL.

Isolation: the lab's `vmctl` role may not CREATE DATABASE, but it owns database `vmctl`, so each
test gets a fresh schema `vmctl_test_<random>` there and reaches it through a conninfo whose
`options=-csearch_path=<schema>` makes it the only schema the test's connections see. The schema
is dropped (CASCADE) when the test ends. Advisory locks are per database, so tests running at the
same time only wait for each other's claims and migrations; they never see each other's rows.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import fresh_schema
from vmctl.adapters import db
from vmctl.adapters.store import PgStore
from vmctl.core.errors import (
    CapacityError,
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    StoreUnavailable,
)
from vmctl.core.inventory import AddressPool
from vmctl.core.records import NewVm, NodeUsage, WatchChanges

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def lab_pg_url(request: pytest.FixtureRequest) -> str:
    """The lab's PostgreSQL: VMCTL_DATABASE_URL when set (``eval "$(lab/lab env)"``), else the
    ``lab`` fixture's (which brings the lab up)."""
    url = os.environ.get("VMCTL_DATABASE_URL")
    return url or str(request.getfixturevalue("lab")["postgres"]["url"])


@pytest.fixture
def pg_url(lab_pg_url: str) -> Iterator[str]:
    with fresh_schema(lab_pg_url) as url:
        yield url


@pytest.fixture
def store(pg_url: str) -> Iterator[PgStore]:
    db.upgrade(pg_url)
    with PgStore(pg_url, actor="tester@test") as s:
        yield s


def _vm(name: str, **kw: object) -> NewVm:
    fields: dict[str, object] = dict(
        name=name, ram_mb=512, cpu=1, disk_gb=2, root_gb=4, image="debian-12",
        mac="52:54:00:00:00:01", group_name=None, project=None,
    )  # fmt: skip
    fields.update(kw)
    return NewVm(**fields)  # type: ignore[arg-type]


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    return {r[0] for r in rows}


# -- migrations -----------------------------------------------------------------------------


# .sql files, and .py ones (0011: procrastinate's schema, read from the installed package)
ALL_MIGRATIONS = sorted(
    p.stem for p in [*db.MIGRATIONS_DIR.glob("*.sql"), *db.MIGRATIONS_DIR.glob("[0-9]*.py")]
)


def test_upgrade_applies_every_migration_once(pg_url: str) -> None:
    assert ALL_MIGRATIONS[:2] == ["0001_initial", "0002_addresses_and_watcher"]
    assert db.upgrade(pg_url) == ALL_MIGRATIONS
    assert {"vms", "nodes", "events", "released_addresses", "heartbeats"} <= _tables(pg_url)
    assert db.upgrade(pg_url) == []


def test_two_processes_upgrading_at_once_apply_each_migration_once(pg_url: str) -> None:
    code = "import sys; from vmctl.adapters import db; print(','.join(db.upgrade(sys.argv[1])))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, pg_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]  # fmt: skip
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    applied = sorted(out.strip() for out, _err in results)
    assert applied == ["", ",".join(ALL_MIGRATIONS)], results
    assert db.upgrade(pg_url) == []


def test_two_threads_upgrading_at_once_apply_each_migration_once(pg_url: str) -> None:
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(db.upgrade(pg_url))) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == [[], ALL_MIGRATIONS]


def test_stale_yoyo_lock_row_does_not_block_upgrade(pg_url: str) -> None:
    db.upgrade(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now(), 999999)")
    assert db.upgrade(pg_url, lock_timeout_s=5) == []


# -- VMs ------------------------------------------------------------------------------------


def test_claim_get_list_delete(store: PgStore) -> None:
    seen: list[list[NodeUsage]] = []

    def choose(usages: list[NodeUsage]) -> str:
        seen.append(usages)
        return "node-a"

    rec = store.claim(
        _vm("web-1", group_name="web", project="p1"), choose, host_key="ssh-ed25519 AAAA"
    )
    assert seen == [[]]
    assert (rec.name, rec.node, rec.state, rec.group_name, rec.project) == (
        "web-1", "node-a", "creating", "web", "p1",
    )  # fmt: skip
    assert rec.host_key == "ssh-ed25519 AAAA"
    assert rec.ip is None and rec.ip_state is None
    assert store.get("web-1") == rec

    store.claim(_vm("db-1", group_name="web", cpu=2), choose)
    assert seen[1] == [NodeUsage("node-a", 1, 512, 6, frozenset({"web"}), 1)]
    store.claim(_vm("aaa"), lambda _u: "node-b")
    assert [r.name for r in store.list()] == ["aaa", "db-1", "web-1"]
    assert [r.name for r in store.list(node="node-a")] == ["db-1", "web-1"]
    assert store.list(state="running") == []

    running = store.set_state("db-1", "running")
    assert running.state == "running" and running.updated_at >= rec.updated_at
    assert [r.name for r in store.list(node="node-a", state="running")] == ["db-1"]
    with_ip = store.set_ip("db-1", "10.0.0.7", "confirmed")
    assert (with_ip.ip, with_ip.ip_state) == ("10.0.0.7", "confirmed")
    assert store.usage() == [
        NodeUsage("node-a", 3, 1024, 12, frozenset({"web"}), 2),
        NodeUsage("node-b", 1, 512, 6, frozenset(), 1),
    ]

    assert store.delete("web-1") is True
    assert store.delete("web-1") is False
    with pytest.raises(NotFound, match="no VM named web-1"):
        store.get("web-1")
    with pytest.raises(NotFound):
        store.set_state("web-1", "running")
    assert [r.name for r in store.list()] == ["aaa", "db-1"]


def test_duplicate_name_is_a_conflict_and_choose_is_not_asked(store: PgStore) -> None:
    store.claim(_vm("dup"), lambda _u: "node-a")

    def choose(_u: list[NodeUsage]) -> str:
        raise AssertionError("choose must not be called for a taken name")

    with pytest.raises(Conflict, match=r"a VM named dup exists already \(on node node-a\)"):
        store.claim(_vm("dup"), choose)
    assert len(store.list()) == 1


def test_choose_raising_records_nothing(store: PgStore) -> None:
    def choose(_u: list[NodeUsage]) -> str:
        raise CapacityError("no room")

    with pytest.raises(CapacityError):
        store.claim(_vm("nope"), choose)
    assert store.list() == []


def test_name_check_is_enforced_by_the_database(store: PgStore, pg_url: str) -> None:
    insert = """INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image, mac)
                VALUES (%s, 'n', 'creating', 1, 1, 0, 1, 'i', 'm')"""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for bad in ["Web", "1web", "", "a_b", "a" * 64, "web\n"]:
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(insert, (bad,))
        conn.execute(insert, ("a" * 63,))
        conn.execute(insert, ("a-0",))
    with pytest.raises(InvalidInput):
        store.claim(_vm("Bad_Name"), lambda _u: "node-a")
    with pytest.raises(InvalidInput, match="ram_mb"):
        store.claim(_vm("zero-ram", ram_mb=0), lambda _u: "node-a")


def test_timestamps_are_utc_whatever_the_session_time_zone(pg_url: str) -> None:
    db.upgrade(pg_url)
    options = conninfo_to_dict(pg_url)["options"]
    elsewhere = make_conninfo(pg_url, options=f"{options} -cTimeZone=America/New_York")
    with PgStore(elsewhere) as store:
        rec = store.claim(_vm("clock"), lambda _u: "node-a")
        assert rec.created_at.tzinfo == UTC and rec.updated_at.tzinfo == UTC
        assert rec.created_at == store.get("clock").created_at
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT created_at FROM vms WHERE name = 'clock'").fetchone()
    assert row is not None and row[0] == rec.created_at


def test_ten_concurrent_claims_for_room_for_five(pg_url: str) -> None:
    db.upgrade(pg_url)
    per_vm = _vm("x")
    room = 5  # VMs' worth on the one node

    def choose(usages: list[NodeUsage]) -> str:
        used = next((u for u in usages if u.node == "node-a"), NodeUsage("node-a", 0, 0, 0))
        if used.ram_mb + per_vm.ram_mb > room * per_vm.ram_mb:
            raise CapacityError("node-a is full")
        return "node-a"

    barrier = threading.Barrier(10, timeout=30)
    outcomes: dict[str, str] = {}

    def create(i: int) -> None:
        with PgStore(pg_url) as s:
            s.usage()  # connect before the race
            barrier.wait()
            try:
                s.claim(_vm(f"vm-{i}"), choose)
                outcomes[f"vm-{i}"] = "ok"
            except CapacityError:
                outcomes[f"vm-{i}"] = "capacity"

    threads = [threading.Thread(target=create, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes.values()) == ["capacity"] * 5 + ["ok"] * 5
    with PgStore(pg_url) as s:
        rows = s.list()
        assert sorted(r.name for r in rows) == sorted(n for n, o in outcomes.items() if o == "ok")
        assert s.usage() == [NodeUsage("node-a", 5, 5 * 512, 5 * 6, frozenset(), 5)]


def test_events_are_recorded(store: PgStore) -> None:
    store.add_event("ev-1", "node-a", "create", "started", {"ram_mb": 512})
    store.add_event("ev-1", "node-a", "create", "ok", {})
    store.add_event("other", None, "placement", "failed", {"cause": "no room"})
    events = store.events("ev-1")
    assert [(e["action"], e["result"], e["detail"]) for e in events] == [
        ("create", "started", {"ram_mb": 512}),
        ("create", "ok", {}),
    ]
    assert all(e["actor"] == "tester@test" and e["node"] == "node-a" for e in events)
    assert all(e["at"].utcoffset() == timedelta(0) for e in events)
    with pytest.raises(ValueError):
        store.add_event("ev-1", "node-a", "create", "maybe", {})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_postgres_is_store_unavailable_without_password() -> None:
    password = "s3cret-" + secrets.token_hex(8)
    port = _closed_port()
    url = f"postgresql://vmctl:{password}@127.0.0.1:{port}/vmctl"
    with PgStore(url) as store, pytest.raises(StoreUnavailable) as info:
        started = time.monotonic()
        store.get("anything")
    assert time.monotonic() - started < 2  # refused at once: no need to wait for the pool
    message = str(info.value)
    assert message.endswith("is unreachable: Connection refused"), message
    assert message.startswith(f"PostgreSQL at 127.0.0.1:{port} is unreachable: ")
    assert password not in message
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    with pytest.raises(StoreUnavailable) as info:
        db.upgrade(url)
    assert password not in str(info.value)


def test_building_a_store_costs_nothing_and_a_bad_url_is_a_config_error() -> None:
    threads = threading.active_count()
    store = PgStore(f"postgresql://vmctl@127.0.0.1:{_closed_port()}/vmctl")
    assert threading.active_count() == threads  # no pool, no connection until first used
    store.close()
    with PgStore("not a conninfo") as store, pytest.raises(ConfigError):
        store.ping()


def _backends(url: str, application_name: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        ).fetchall()
    return [row[0] for row in rows]


def test_a_connection_that_died_while_idle_is_replaced(pg_url: str) -> None:
    db.upgrade(pg_url)
    name = f"vmctl-test-{secrets.token_hex(4)}"
    with PgStore(make_conninfo(pg_url, application_name=name), max_size=1) as store:
        store.claim(_vm("idle"), lambda _u: "node-a")
        [pid] = _backends(pg_url, name)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        assert _backends(pg_url, name) == []
        assert store.get("idle").state == "creating"
        assert store.set_state("idle", "running").state == "running"
        assert len(after := _backends(pg_url, name)) == 1 and after != [pid]


def test_work_cut_off_before_commit_is_run_once_more_on_another_connection(
    store: PgStore,
) -> None:
    pids: list[int] = []

    def work(conn: psycopg.Connection[dict[str, object]], cut: int) -> object:
        pids.append(conn.info.backend_pid)
        if len(pids) <= cut:  # the connection dies in the middle of the transaction
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        row = conn.execute("SELECT 1 AS one").fetchone()
        assert row is not None
        return row["one"]

    assert store._run(lambda c: work(c, cut=1)) == 1
    assert len(pids) == 2 and pids[0] != pids[1]
    pids.clear()
    with pytest.raises(StoreUnavailable, match="is unreachable: terminating connection"):
        store._run(lambda c: work(c, cut=2))  # once more only
    assert len(pids) == 2
    assert store.list() == []  # and the store goes on


def test_a_store_shared_by_eight_threads_uses_at_most_max_size_connections(pg_url: str) -> None:
    db.upgrade(pg_url)
    name = f"vmctl-test-{secrets.token_hex(4)}"
    counts: list[int] = []
    done = threading.Event()

    def count() -> None:
        while not done.is_set():
            counts.append(len(_backends(pg_url, name)))
            time.sleep(0.01)

    errors: list[BaseException] = []
    barrier = threading.Barrier(8, timeout=30)

    def work(store: PgStore, i: int) -> None:
        try:
            barrier.wait()
            for n in range(25):
                assert store.get("shared").node == "node-a"
                assert [vm.name for vm in store.list(node="node-a")] == ["shared"]
                store.add_event("shared", "node-a", "poke", "ok", {"thread": i, "n": n})
        except BaseException as e:
            errors.append(e)

    with PgStore(make_conninfo(pg_url, application_name=name), max_size=3) as store:
        store.claim(_vm("shared"), lambda _u: "node-a")
        counter = threading.Thread(target=count)
        counter.start()
        threads = [threading.Thread(target=work, args=(store, i)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        done.set()
        counter.join(10)
        assert errors == []
        events = store.events("shared")
        assert len(events) == 8 * 25 == len({e["id"] for e in events})
        assert {(e["detail"]["thread"], e["detail"]["n"]) for e in events} == {
            (i, n) for i in range(8) for n in range(25)
        }
        assert 2 <= max(counts) <= 3, counts  # the threads did share, never past max_size
    assert _backends(pg_url, name) == []  # close() closed them all


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture
def own_postgres() -> Iterator[tuple[str, Callable[[str], None]]]:
    """A throwaway PostgreSQL on a free loopback port: (url, pg_ctl action runner)."""
    if os.geteuid() != 0 or not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip("needs root, runuser and PostgreSQL 15's initdb")
    port = _closed_port()
    home = Path(tempfile.mkdtemp(prefix="vmctl-pg-"))
    shutil.chown(home, "postgres")

    def as_postgres(*argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv], check=True, cwd=home,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def pg_ctl(action: str) -> None:
        opts = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
        as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", f"{home}/data", "-l", f"{home}/log", "-w",
            "-m", "fast", "-o", opts, action,
        )  # fmt: skip

    try:
        as_postgres(str(PG_BIN / "initdb"), "-D", f"{home}/data", "-U", "postgres", "-A", "trust")
        pg_ctl("start")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", pg_ctl
    finally:
        if (home / "data" / "postmaster.pid").exists():
            pg_ctl("stop")
        shutil.rmtree(home, ignore_errors=True)


def test_store_rides_over_a_postgres_restart_and_outage(
    own_postgres: tuple[str, Callable[[str], None]],
) -> None:
    url, pg_ctl = own_postgres
    db.upgrade(url)
    with PgStore(url) as store:
        store.claim(_vm("survivor"), lambda _u: "node-a")
        pg_ctl("restart")  # the PgStore's connection dies; reads and writes reconnect once
        assert store.get("survivor").state == "creating"
        pg_ctl("restart")
        assert store.set_state("survivor", "running").state == "running"

        pg_ctl("stop")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"is unreachable: Connection refused"):
            store.get("survivor")
        assert time.monotonic() - started < 2
        with pytest.raises(StoreUnavailable):
            db.upgrade(url)

        pg_ctl("start")
        assert store.get("survivor").state == "running"


def test_conninfo_forms_are_accepted(pg_url: str) -> None:
    params = conninfo_to_dict(pg_url)
    as_kw = make_conninfo(**params)  # key=value form
    assert db.upgrade(as_kw) == ALL_MIGRATIONS
    assert db.describe(pg_url) == f"{params['host']}:{params['port']}"


# -- addresses on managed networks ------------------------------------------------------------


def _pool(first: str, last: str, exclude: tuple[str, ...] = ()) -> AddressPool:
    return AddressPool(
        "10.9.0.0/24", IPv4Address(first), IPv4Address(last), frozenset(map(IPv4Address, exclude))
    )


def test_concurrent_claims_never_get_the_same_address(pg_url: str) -> None:
    db.upgrade(pg_url)
    pool = _pool("10.9.0.10", "10.9.0.14", exclude=("10.9.0.12",))  # room for 4
    barrier = threading.Barrier(8, timeout=30)
    got: dict[str, str | None] = {}

    def create(i: int) -> None:
        with PgStore(pg_url) as s:
            s.usage()
            barrier.wait()
            try:
                vm = s.claim(_vm(f"vm-{i}", mac=f"52:54:00:00:01:{i:02x}"), lambda _u: "node-a",
                             pool_of=lambda _node: pool)  # fmt: skip
                assert vm.ip_state == "expected" and vm.ip == vm.reserved_ip
                got[vm.name] = vm.reserved_ip
            except CapacityError as exc:
                assert "every address of 10.9.0.0/24 (10.9.0.10-10.9.0.14) is taken" in str(exc)
                got[f"vm-{i}"] = None

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    addresses = sorted(ip for ip in got.values() if ip)
    assert addresses == ["10.9.0.10", "10.9.0.11", "10.9.0.13", "10.9.0.14"]
    assert list(got.values()).count(None) == 4
    with PgStore(pg_url) as s:  # the refused ones left no row
        assert sorted(vm.name for vm in s.list()) == sorted(n for n, ip in got.items() if ip)


def test_a_given_back_address_is_handed_out_again_last(store: PgStore) -> None:
    pool = _pool("10.9.0.10", "10.9.0.12")

    def claim(name: str) -> str | None:
        return store.claim(_vm(name), lambda _u: "node-a", pool_of=lambda _n: pool).reserved_ip

    assert [claim(n) for n in ("a", "b", "c")] == ["10.9.0.10", "10.9.0.11", "10.9.0.12"]
    store.delete("b")
    time.sleep(0.01)
    store.delete("a")
    assert claim("d") == "10.9.0.11"  # given back longest ago
    assert claim("e") == "10.9.0.10"
    # unmanaged networks: no address until the watcher finds one
    vm = store.claim(_vm("f"), lambda _u: "node-b")
    assert (vm.ip, vm.ip_state, vm.reserved_ip, vm.ip_pool) == (None, None, None, None)


def test_record_ip_confirms_once_and_follows_changes(store: PgStore) -> None:
    pool = _pool("10.9.0.10", "10.9.0.12")
    vm = store.claim(_vm("web", mac="52:54:00:aa:bb:cc"), lambda _u: "n1", pool_of=lambda _n: pool)
    change = store.record_ip("web", "52:54:00:aa:bb:cc", "10.9.0.10", "lease")
    assert change is not None
    assert (change.ip, change.previous, change.previous_state) == (
        "10.9.0.10",
        "10.9.0.10",
        "expected",
    )
    assert store.get("web").ip_state == "confirmed"
    assert store.record_ip("web", "52:54:00:aa:bb:cc", "10.9.0.10", "lease") is None  # no change
    assert store.record_ip("web", "52:54:00:00:00:99", "10.9.0.50", "arp") is None  # not its MAC
    assert store.record_ip("gone", "52:54:00:aa:bb:cc", "10.9.0.50", "arp") is None  # no such VM
    moved = store.record_ip("web", "52:54:00:aa:bb:cc", "10.9.0.77", "arp")
    assert moved is not None and (moved.previous, moved.previous_state) == (
        "10.9.0.10",
        "confirmed",
    )
    assert store.get("web").reserved_ip == vm.reserved_ip  # the reservation stays
    details = [e["detail"] for e in store.events("web") if e["action"] == "ip"]
    assert [(d["ip"], d["source"]) for d in details] == [
        ("10.9.0.10", "lease"),
        ("10.9.0.77", "arp"),
    ]


def test_heartbeats(store: PgStore) -> None:
    assert store.alive("watch-ip", 15) == []
    store.heartbeat("watch-ip@a:1", "watch-ip", {"watched": 3})
    store.heartbeat("watch-ip@a:1", "watch-ip", {"watched": 4})
    assert store.alive("watch-ip", 15) == ["watch-ip@a:1"]
    assert store.alive("serve", 15) == []
    time.sleep(1.1)
    assert store.alive("watch-ip", 1) == []
    store.forget_heartbeat("watch-ip@a:1")
    assert store.alive("watch-ip", 15) == []


def test_cloud_figures_count_vms_and_the_creates_and_deletes_of_the_event_log(
    store: PgStore,
) -> None:
    store.claim(_vm("fig-a"), lambda _u: "node-a")
    store.claim(_vm("fig-b", mac="52:54:00:00:00:02"), lambda _u: "node-a")
    store.claim(_vm("fig-c", mac="52:54:00:00:00:03"), lambda _u: "node-b")
    store.set_state("fig-a", "running")
    store.set_ip("fig-a", "10.0.0.7", "confirmed")
    store.set_state("fig-b", "running")  # running, no address yet
    for seconds in (0.4, 3.0, 12.0):
        store.add_event("x", "node-a", "create", "ok", {"seconds": seconds})
    store.add_event("x", "node-a", "create", "ok", {})  # from before durations were recorded
    store.add_event("x", "node-a", "create", "started", {})  # not an end
    store.add_event("y", "node-a", "create", "failed", {"seconds": 2, "cleanup_problems": []})
    store.add_event("z", "node-a", "create", "failed", {"cleanup_problems": ["node: gone"]})
    store.add_event("x", "node-a", "delete", "ok", {"seconds": 1.5})

    figures = store.cloud_figures([1, 5, 10])
    assert figures.vms == {("node-a", "running"): 2, ("node-b", "creating"): 1}
    assert figures.waiting == {"node-a": 1, "node-b": 1}
    ops = {(o.action, o.result): o for o in figures.operations}
    ok = ops[("create", "ok")]
    assert (ok.count, ok.timed, ok.seconds, ok.at_most) == (4, 3, 15.4, (1, 2, 2))
    failed = ops[("create", "failed")]
    assert (failed.count, failed.timed, failed.at_most) == (2, 1, (0, 1, 1))
    assert ops[("delete", "ok")].at_most == (0, 1, 1)
    assert ("delete", "failed") not in ops
    assert figures.rollbacks == {"clean": 1, "incomplete": 1}


_SUMMED_USAGE = """
    SELECT node, sum(cpu) AS cpu, sum(ram_mb) AS ram_mb, sum(disk_gb) AS disk_gb, count(*) AS vms,
           array_remove(array_agg(DISTINCT group_name), NULL) AS groups
    FROM (SELECT node, cpu, ram_mb, disk_gb + root_gb AS disk_gb, group_name FROM vms
          UNION ALL
          SELECT move_node, cpu, ram_mb, 0, group_name FROM vms WHERE move_node IS NOT NULL) AS v
    GROUP BY node ORDER BY node
"""


def _summed(pg_url: str) -> list[NodeUsage]:
    """Every node's usage summed from the vms table itself (what claims read before schema 0008)."""
    with psycopg.connect(pg_url) as conn:
        return [
            NodeUsage(r[0], int(r[1]), int(r[2]), int(r[3]), frozenset(r[5]), int(r[4]))
            for r in conn.execute(_SUMMED_USAGE).fetchall()
        ]


def test_kept_node_usage_follows_every_change_of_vms(store: PgStore, pg_url: str) -> None:
    """Schema 0008 keeps each node's usage in a table: after any mix of inserts, resizes, group
    changes, moves begun, ended and abandoned, deletes and a TRUNCATE, it equals the sums of the
    vms table, and writes that touch no counted column (addresses, states) leave it alone."""
    rng = __import__("random").Random(8)
    nodes = ["node-a", "node-b", "node-c"]
    names: list[str] = []
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for step in range(300):
            op = rng.choice(["insert"] * 4 + ["resize", "group", "move", "end", "state", "delete"])
            name = rng.choice(names) if names else None
            if op == "insert" or name is None:
                name = f"vm-{step}"
                names.append(name)
                conn.execute(
                    """INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image,
                                        mac, group_name)
                       VALUES (%s, %s, 'creating', %s, %s, %s, %s, 'debian-12', 'm', %s)""",
                    (name, rng.choice(nodes), rng.choice([256, 512]), rng.randint(1, 4),
                     rng.randint(0, 5), rng.randint(1, 4), rng.choice([None, "g1", "g2"])),
                )  # fmt: skip
            elif op == "resize":
                conn.execute(
                    "UPDATE vms SET cpu = %s, ram_mb = %s, disk_gb = %s WHERE name = %s",
                    (rng.randint(1, 4), rng.choice([256, 1024]), rng.randint(0, 9), name),
                )
            elif op == "group":
                conn.execute(
                    "UPDATE vms SET group_name = %s WHERE name = %s",
                    (rng.choice([None, "g1", "g3"]), name),
                )
            elif op == "move":
                conn.execute(
                    "UPDATE vms SET move_node = %s WHERE name = %s", (rng.choice(nodes), name)
                )
            elif op == "end":
                done = rng.random() < 0.5
                conn.execute(
                    "UPDATE vms SET node = CASE WHEN %s THEN coalesce(move_node, node) ELSE node"
                    " END, move_node = NULL WHERE name = %s",
                    (done, name),
                )
            elif op == "state":
                conn.execute("UPDATE vms SET state = 'running' WHERE name = %s", (name,))
            else:
                conn.execute("DELETE FROM vms WHERE name = %s", (name,))
                names.remove(name)
            if step % 25 == 0:
                assert store.usage() == _summed(pg_url), f"after step {step} ({op})"
        assert store.usage() == _summed(pg_url)
        with conn.transaction():  # several rows in one statement, and a rollback
            conn.execute("UPDATE vms SET ram_mb = ram_mb * 2, move_node = 'node-d'")
            kept = conn.execute("SELECT sum(ram_mb) FROM node_usage").fetchone()
            summed = conn.execute("SELECT sum(ram_mb) FROM vms").fetchone()
            moving = conn.execute("SELECT sum(ram_mb) FROM vms WHERE move_node IS NOT NULL")
            assert kept and summed and kept[0] == summed[0] + moving.fetchone()[0]  # (its own view)
            raise psycopg.Rollback()
    assert store.usage() == _summed(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE vms SET ram_mb = ram_mb * 2, move_node = 'node-d'")
        assert store.usage() == _summed(pg_url)
        conn.execute("TRUNCATE vms CASCADE")
    assert store.usage() == [] == _summed(pg_url)


def test_node_usage_counts_the_vms_recorded_before_schema_0008(pg_url: str) -> None:
    from yoyo import read_migrations

    with db._yoyo_backend(pg_url) as backend:  # up to schema 0007
        older = read_migrations(str(db.MIGRATIONS_DIR)).filter(lambda m: m.id < "0008")
        backend.apply_migrations(backend.to_apply(older))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image, mac,
                                group_name, move_node)
               SELECT 'old-' || i, 'node-' || (i % 3), 'running', 512, 1 + i % 2, i % 4, 4,
                      'debian-12', 'm', CASE WHEN i % 5 = 0 THEN 'g' END,
                      CASE WHEN i % 7 = 0 THEN 'node-9' END
               FROM generate_series(1, 50) AS i"""
        )
    assert db.upgrade(pg_url) == [m for m in ALL_MIGRATIONS if m >= "0008"]
    with PgStore(pg_url) as s:
        kept = s.usage()
    assert kept == _summed(pg_url) and len(kept) == 4


def test_claims_moves_and_deletes_at_once_neither_deadlock_nor_lose_a_count(pg_url: str) -> None:
    """Eight threads claim, resize, move (in both directions between two nodes) and delete at
    once, as creates, `vmctl move` and deletes of several processes do: no deadlock, no error,
    and the kept usage is still the vms table's sums."""
    db.upgrade(pg_url)
    errors: list[BaseException] = []

    def choose(usages: list[NodeUsage]) -> str:
        return min(["node-a", "node-b"], key=lambda n: sum(u.ram_mb for u in usages if u.node == n))

    def work(t: int) -> None:
        try:
            with PgStore(pg_url) as s, psycopg.connect(pg_url, autocommit=True) as conn:
                for i in range(25):
                    name = f"t{t}-{i}"
                    s.claim(_vm(name), choose)
                    target = "node-b" if t % 2 else "node-a"
                    s.begin_move(name, target, lambda _u: None, None)
                    if i % 3 == 0:
                        s.end_move(name, done=True)
                    elif i % 3 == 1:
                        conn.execute("DELETE FROM vms WHERE name = %s", (name,))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    with PgStore(pg_url) as s:
        assert s.usage() == _summed(pg_url) != []


def test_the_vms_version_moves_with_every_change_and_only_then(store: PgStore) -> None:
    first = store.vms_version()
    store.list()
    store.usage()
    assert store.vms_version() == first
    store.claim(_vm("ver-1"), lambda _u: "node-a")
    claimed = store.vms_version()
    assert claimed > first
    store.set_state("ver-1", "running")
    assert store.vms_version() > claimed
    running = store.vms_version()
    store.delete("ver-1")
    assert store.vms_version() > running


def _names(changes: WatchChanges) -> tuple[set[str], set[str]]:
    return {vm.name for vm in changes.vms}, set(changes.gone)


def test_the_watcher_reads_only_what_changed_since_its_last_read(
    store: PgStore, pg_url: str
) -> None:
    watched = ("creating", "running")
    for name in ("wc-a", "wc-b", "wc-c"):
        store.claim(_vm(name, mac="52:54:00:AA:00:01"), lambda _u: "node-a")
    store.set_state("wc-c", "stopped")
    first = store.watch_changes(None, watched)
    assert first.whole and _names(first) == ({"wc-a", "wc-b"}, set())
    assert {vm.mac for vm in first.vms} == {"52:54:00:aa:00:01"}  # lower case

    # nothing changed: nothing read, and the version stays
    same = store.watch_changes(first.version, watched)
    assert not same.whole and _names(same) == (set(), set()) and same.version == first.version

    # a new VM, an address recorded, one stopped, one deleted, one deleted and made again
    store.claim(_vm("wc-d"), lambda _u: "node-b")
    store.record_ip("wc-a", "52:54:00:AA:00:01", "10.0.0.5", "lease")
    store.set_state("wc-b", "stopped")
    store.set_state("wc-c", "running")
    store.delete("wc-c")
    store.claim(_vm("wc-e"), lambda _u: "node-a")
    store.delete("wc-e")
    store.claim(_vm("wc-e"), lambda _u: "node-b")
    later = store.watch_changes(first.version, watched)
    assert not later.whole
    assert _names(later) == ({"wc-a", "wc-d", "wc-e"}, {"wc-b", "wc-c"})
    got = {vm.name: vm for vm in later.vms}
    assert (got["wc-a"].ip, got["wc-a"].ip_state) == ("10.0.0.5", "confirmed")
    assert got["wc-e"].node == "node-b"
    assert later.version > first.version == same.version

    # a statement that changes no row moves nothing
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE vms SET state = 'error' WHERE name = 'no-such-vm'")
    assert store.vms_version() == later.version

    # after a TRUNCATE, what was read before is forgotten: read whole
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("TRUNCATE vms CASCADE")
    store.claim(_vm("wc-f"), lambda _u: "node-a")
    again = store.watch_changes(later.version, watched)
    assert again.whole and _names(again) == ({"wc-f"}, set())


def test_rows_from_before_schema_0009_are_read_whole_then_followed(pg_url: str) -> None:
    from yoyo import read_migrations

    with db._yoyo_backend(pg_url) as backend:  # up to schema 0008
        older = read_migrations(str(db.MIGRATIONS_DIR)).filter(lambda m: m.id < "0009")
        backend.apply_migrations(backend.to_apply(older))
    with psycopg.connect(pg_url, autocommit=True) as conn:  # as vmctl of schema 0008 did
        for name in ("old-a", "old-b"):
            conn.execute(
                """INSERT INTO vms (name, node, state, ram_mb, cpu, disk_gb, root_gb, image, mac)
                   VALUES (%s, 'node-a', 'creating', 512, 1, 2, 4, 'debian-12', 'm')""",
                (name,),
            )
        row = conn.execute("SELECT version FROM vms_version").fetchone()
        before = row[0] if row else 0
    assert db.upgrade(pg_url) == [m for m in ALL_MIGRATIONS if m >= "0009"]
    with PgStore(pg_url) as s:
        assert s.vms_version() == before  # the sequence goes on from the version
        first = s.watch_changes(None, ("creating",))
        assert _names(first) == ({"old-a", "old-b"}, set())
        s.set_state("old-a", "running")
        later = s.watch_changes(first.version, ("creating",))
        assert _names(later) == (set(), {"old-a"}) and later.version == before + 1


def test_following_the_changes_ends_where_reading_whole_does(store: PgStore, pg_url: str) -> None:
    """Writers claim, change and delete VMs at once while a reader follows the changes: what the
    reader holds at the end is what a read from scratch gives (no change missed, none stale)."""
    import random

    watched = ("creating", "running")
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        rng = random.Random(k)
        try:
            with PgStore(pg_url) as s:
                for _ in range(60):
                    name = f"follow-{k}-{rng.randrange(6)}"
                    try:
                        action = rng.choice(("claim", "run", "stop", "ip", "delete"))
                        if action == "claim":
                            s.claim(_vm(name), lambda _u: rng.choice(("node-a", "node-b")))
                        elif action == "delete":
                            s.delete(name)
                        elif action == "ip":
                            s.record_ip(
                                name, "52:54:00:00:00:01", f"10.0.{k}.{rng.randrange(250)}", "arp"
                            )
                        else:
                            s.set_state(name, "running" if action == "run" else "stopped")
                    except (Conflict, NotFound):
                        pass
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    view: dict[str, object] = {}
    since: int | None = None
    reads = 0
    while True:
        done = not any(t.is_alive() for t in threads)
        changes = store.watch_changes(since, watched)
        reads += 1
        if changes.whole:
            view.clear()
        for name in changes.gone:
            view.pop(name, None)
        view.update({vm.name: vm for vm in changes.vms})
        since = changes.version
        if done:
            break
    assert errors == []
    assert reads > 3
    assert view == {vm.name: vm for vm in store.watch_changes(None, watched).vms}


def test_every_vms_snapshot_names_come_in_one_read(store: PgStore) -> None:
    for name in ("snap-a", "snap-b", "snap-c"):
        store.claim(_vm(name), lambda _u: "node-a")
    store.add_snapshot("snap-a", "one", "running", False)
    store.add_snapshot("snap-a", "two", "stopped", True)
    store.add_snapshot("snap-b", "only", "running", False)
    assert store.snapshot_names() == {"snap-a": ["one", "two"], "snap-b": ["only"]}
    assert store.snapshot_names()["snap-a"] == [s.name for s in store.snapshots("snap-a")]
