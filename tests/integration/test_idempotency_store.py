"""Idempotency keys in the lab's real PostgreSQL (schema 0010, `PgStore`'s idempotency part, the
service over it): concurrent requests with one key on two "replicas" (two stores) run the work
once and all get its answer; the key with another body is refused; answers expire; a holder
that dies lets the next one run at once. Each test has a fresh schema (tests/conftest.py) and
keys of its own (advisory locks are per database)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.conftest import fresh_schema
from vmctl.adapters import db
from vmctl.adapters.store import PgStore
from vmctl.core.errors import Busy
from vmctl.core.idempotency import Answer, KeptAnswer, KeyReused
from vmctl.services.idempotency import IdempotencyService

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab_pg_url(request: pytest.FixtureRequest) -> str:
    url = os.environ.get("VMCTL_DATABASE_URL")
    return url or str(request.getfixturevalue("lab")["postgres"]["url"])


@pytest.fixture
def pg_url(lab_pg_url: str) -> Iterator[str]:
    with fresh_schema(lab_pg_url) as url:
        db.upgrade(url)
        yield url


@pytest.fixture
def replicas(pg_url: str) -> Iterator[tuple[PgStore, PgStore]]:
    """Two stores, as two API replicas have."""
    with PgStore(pg_url, actor="idem-a@test") as a, PgStore(pg_url, actor="idem-b@test") as b:
        yield a, b


def _key() -> str:
    return f"idem-test-{uuid.uuid4()}"


def _rows(url: str, key: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT scope, fingerprint, status, body FROM idempotency_keys WHERE key = %s", (key,)
        ).fetchall()


def test_concurrent_requests_with_one_key_run_once_and_share_the_answer(
    replicas: tuple[PgStore, PgStore], pg_url: str
) -> None:
    key = _key()
    runs: list[str] = []
    lock = threading.Lock()

    def work() -> Answer:
        with lock:
            runs.append(threading.current_thread().name)
        time.sleep(1.0)  # a create in progress: the others wait for it
        return Answer(201, {"Name": "idem-vm", "Node": "kvm1", "CPU": "1"})

    services = [IdempotencyService(store, wait_s=30) for store in replicas]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: services[i % 2].run("demo", key, "f1", work), range(6)))
    assert len(runs) == 1
    # the same body, keys in the same order (kept as written: json, not jsonb)
    assert {(a.status, json.dumps(a.body)) for a in answers} == {
        (201, '{"Name": "idem-vm", "Node": "kvm1", "CPU": "1"}')
    }
    assert sorted(a.replayed for a in answers) == [False] + [True] * 5
    assert _rows(pg_url, key) == [
        ("demo", "f1", 201, {"Name": "idem-vm", "Node": "kvm1", "CPU": "1"})
    ]


def test_the_key_with_another_body_is_refused_and_a_refusal_is_kept(
    replicas: tuple[PgStore, PgStore],
) -> None:
    key = _key()
    a, b = (IdempotencyService(store) for store in replicas)
    refusal = Answer(409, {"error": "name: a VM named x exists already"})
    assert a.run("demo", key, "f1", lambda: refusal) == refusal
    assert b.run("demo", key, "f1", lambda: Answer(201, {})) == Answer(
        409, refusal.body, replayed=True
    )
    with pytest.raises(KeyReused, match="was used with another request"):
        b.run("demo", key, "f2", lambda: Answer(201, {}))
    # another project's key of the same name is another key
    assert b.run("other", key, "f2", lambda: Answer(201, {"Name": "y"})).replayed is False


def test_a_server_error_keeps_no_row(replicas: tuple[PgStore, PgStore], pg_url: str) -> None:
    key = _key()
    service = IdempotencyService(replicas[0])
    assert service.run("demo", key, "f1", lambda: Answer(503, {"error": "x"})).status == 503
    assert _rows(pg_url, key) == []
    assert service.run("demo", key, "f1", lambda: Answer(201, {"Name": "z"})).replayed is False
    assert len(_rows(pg_url, key)) == 1


def test_answers_expire_and_expired_rows_are_deleted(
    replicas: tuple[PgStore, PgStore], pg_url: str
) -> None:
    store = replicas[0]
    old, new = _key(), _key()
    store.keep_answer("demo", old, KeptAnswer("f1", 201, {"n": 1}), ttl_s=0.5)
    assert store.kept_answer("demo", old) == KeptAnswer("f1", 201, {"n": 1})
    # an unexpired answer stays as it was
    store.keep_answer("demo", old, KeptAnswer("f2", 201, {"n": 2}), ttl_s=60)
    assert store.kept_answer("demo", old) == KeptAnswer("f1", 201, {"n": 1})
    time.sleep(1.0)
    assert store.kept_answer("demo", old) is None
    # the key is free again for any request; keeping another answer deletes the expired rows
    store.keep_answer("demo", new, KeptAnswer("f3", 201, {"n": 3}), ttl_s=60)
    assert _rows(pg_url, old) == []
    store.keep_answer("demo", old, KeptAnswer("f4", 201, {"n": 4}), ttl_s=60)
    assert store.kept_answer("demo", old) == KeptAnswer("f4", 201, {"n": 4})


def test_a_waiting_request_gives_up_with_busy(replicas: tuple[PgStore, PgStore]) -> None:
    key = _key()
    a, b = replicas
    with a.idempotency_hold("demo", key, 1):
        started = time.monotonic()
        with (
            pytest.raises(Busy, match="the first request with this key is still running"),
            b.idempotency_hold("demo", key, 0.5),
        ):
            pass
        assert 0.5 <= time.monotonic() - started < 3
    with b.idempotency_hold("demo", key, 1):  # let go: the next one holds it at once
        pass


HOLD_AND_HANG = """
import sys, time
from vmctl.adapters.store import PgStore
store = PgStore(sys.argv[1], actor="idem-dies@test")
with store.idempotency_hold("demo", sys.argv[2], 5):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_holder_that_dies_lets_the_next_request_run_at_once(
    replicas: tuple[PgStore, PgStore], pg_url: str
) -> None:
    key = _key()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_HANG, pg_url, key], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        service = IdempotencyService(replicas[0], wait_s=30)
        answer: list[Answer] = []
        waiter = threading.Thread(
            target=lambda: answer.append(service.run("demo", key, "f1", lambda: Answer(201, {})))
        )
        waiter.start()
        time.sleep(0.5)
        assert answer == []  # waits for the holder
        holder.kill()  # a replica killed mid-create (SIGKILL: nothing runs on its way out)
        killed = time.monotonic()
        waiter.join(10)
        assert answer == [Answer(201, {})]
        assert time.monotonic() - killed < 3
    finally:
        holder.kill()
        holder.wait()
