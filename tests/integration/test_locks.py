"""The per-VM operation lock on the lab's PostgreSQL: one holder at a time across processes,
a busy error naming the holder, and a holder that dies lets go at once."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import REPO, fresh_schema
from vmctl.adapters import db
from vmctl.adapters.store import PgStore
from vmctl.core.errors import Busy

pytestmark = pytest.mark.integration


@pytest.fixture
def url(lab: dict) -> Iterator[str]:  # type: ignore[type-arg]
    with fresh_schema(lab["postgres"]["url"]) as pg_url:
        db.upgrade(pg_url)
        yield pg_url


def test_one_holder_at_a_time_and_the_second_is_told_who(url: str) -> None:
    with PgStore(url, actor="alice@m1") as a, PgStore(url, actor="bob@m2") as b:
        with a.vm_lock("lock-web-1", "resize", 0):
            started = time.monotonic()
            with pytest.raises(Busy) as caught, b.vm_lock("lock-web-1", "stop", 0.5):
                pass
            assert time.monotonic() - started >= 0.5
            message = str(caught.value)
            assert "vmctl resize lock-web-1 by alice@m1" in message and "stop waited" in message
            with b.vm_lock("lock-web-2", "stop", 0):  # another VM is free
                pass
        with b.vm_lock("lock-web-1", "stop", 0):  # let go: free at once
            pass


def test_a_waiter_gets_the_lock_when_the_holder_lets_go(url: str) -> None:
    order: list[str] = []
    with PgStore(url) as a, PgStore(url) as b:
        held = threading.Event()

        def holder() -> None:
            with a.vm_lock("lock-web-3", "stop", 0):
                held.set()
                time.sleep(1)
                order.append("first done")

        thread = threading.Thread(target=holder)
        thread.start()
        held.wait(5)
        with b.vm_lock("lock-web-3", "start", 10):
            order.append("second runs")
        thread.join()
    assert order == ["first done", "second runs"]


def test_a_holder_killed_with_sigkill_lets_go(url: str) -> None:
    code = (
        "import sys, time; from vmctl.adapters.store import PgStore\n"
        "s = PgStore(sys.argv[1])\n"
        "with s.vm_lock('lock-web-4', 'create', 0):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, url], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with PgStore(url) as other:
            with pytest.raises(Busy), other.vm_lock("lock-web-4", "reconcile", 0):
                pass
            proc.kill()
            proc.wait()
            with other.vm_lock("lock-web-4", "reconcile", 5):  # PostgreSQL ended its session
                pass
    finally:
        proc.kill()
        proc.wait()


def test_each_installation_has_its_own_id(url: str, lab: dict) -> None:  # type: ignore[type-arg]
    with fresh_schema(lab["postgres"]["url"]) as other_url:
        db.upgrade(other_url)
        with PgStore(url) as a, PgStore(other_url) as b:
            assert a.installation_id() != b.installation_id()
            assert len(a.installation_id()) == 36 and a.installation_id() == a.installation_id()
