"""The Redis VM→node cache, against the lab's Redis and against Redis that is not there.

Isolation: every test uses VM names under a random prefix and removes its keys afterwards; the
outage tests use a closed port, a port that accepts but never answers, or a redis-server of
their own on another loopback port, stopped by its PID.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from vmctl.adapters.cache import NullCache, RedisCache, node_key, open_cache

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(lab: dict) -> Iterator[str]:  # type: ignore[type-arg]
    """A random VM name prefix; whatever keys were made under it are removed at the end."""
    prefix = f"t{secrets.token_hex(5)}-"
    yield prefix
    client = redis.Redis.from_url(lab["redis"]["url"])
    for key in client.scan_iter(match=f"vmctl:vm:{prefix}*"):
        client.delete(key)
    client.close()


def _timed(call: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_set_get_forget(lab: dict, prefix: str) -> None:  # type: ignore[type-arg]
    warnings: list[str] = []
    cache = RedisCache(lab["redis"]["url"], warnings.append)
    name = f"{prefix}web-1"
    assert cache.get_node(name) is None
    cache.set_node(name, "node-a")
    assert cache.get_node(name) == "node-a"
    assert node_key(name) == f"vmctl:vm:{name}:node"
    present = cache.keys()
    assert node_key(name) in present
    ttl = redis.Redis.from_url(lab["redis"]["url"]).ttl(node_key(name))
    assert 0 < ttl <= 7 * 24 * 3600  # entries expire
    cache.set_node(name, "node-b")
    assert cache.get_node(name) == "node-b"
    cache.forget(name)
    cache.forget(name)  # forgetting twice is fine
    assert cache.get_node(name) is None
    present = cache.keys()
    assert not [k for k in present if k.startswith(f"vmctl:vm:{prefix}")]
    assert warnings == []
    cache.close()


def _assert_degrades(cache: RedisCache, warnings: list[str], name: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: cache.get_node(name),
        lambda: cache.set_node(name, "node-a"),
        lambda: cache.get_node(name),
        lambda: cache.forget(name),
        lambda: cache.keys(),
    ]
    for call in calls:
        result, took = _timed(call)
        assert result in (None, []), result
        assert took < 1.0, took
    assert len(warnings) == 1, warnings


def test_closed_port_warns_once_and_misses(prefix: str) -> None:
    password = "pw-" + secrets.token_hex(8)
    port = _free_port()
    warnings: list[str] = []
    cache = RedisCache(f"redis://:{password}@127.0.0.1:{port}/0", warnings.append)
    _assert_degrades(cache, warnings, f"{prefix}vm")
    assert warnings[0].startswith(f"Redis at 127.0.0.1:{port} is unavailable (")
    assert warnings[0].endswith("); working from PostgreSQL")
    assert password not in warnings[0]


def test_silent_server_times_out_within_a_second(prefix: str) -> None:
    """A port that accepts connections but never answers (a hung Redis)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        warnings: list[str] = []
        cache = RedisCache(f"redis://127.0.0.1:{port}/0", warnings.append)
        _assert_degrades(cache, warnings, f"{prefix}vm")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A throwaway redis-server on a free loopback port: (url, start, stop)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    pidfile = tmp_path / "redis.pid"

    def start() -> None:
        subprocess.run(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "yes", "--pidfile", str(pidfile),
             "--dir", str(tmp_path), "--logfile", str(tmp_path / "redis.log")],
            check=True,
        )  # fmt: skip
        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "own redis-server did not start"
                time.sleep(0.05)
        client.close()

    def stop() -> None:
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        pidfile.unlink(missing_ok=True)

    start()
    try:
        yield f"redis://127.0.0.1:{port}/0", start, stop
    finally:
        stop()


def test_redis_stopped_mid_run_degrades_then_recovers(
    own_redis: tuple[str, Callable[[], None], Callable[[], None]],
) -> None:
    url, start, stop = own_redis
    warnings: list[str] = []
    cache = RedisCache(url, warnings.append, retry_after_s=0.3)
    cache.set_node("vm-a", "node-a")
    assert cache.get_node("vm-a") == "node-a"

    stop()
    _assert_degrades(cache, warnings, "vm-a")
    assert "is unavailable" in warnings[0]

    start()  # an empty Redis again (no persistence)
    time.sleep(0.4)  # past retry_after_s: the cache tries Redis again
    assert cache.get_node("vm-a") is None
    cache.set_node("vm-a", "node-b")
    assert cache.get_node("vm-a") == "node-b"
    assert cache.keys() == ["vmctl:vm:vm-a:node"]
    assert len(warnings) == 1  # still only the one warning for this instance


def test_null_cache_and_open_cache(lab: dict) -> None:  # type: ignore[type-arg]
    null = NullCache()
    null.set_node("x", "node-a")
    assert null.get_node("x") is None
    assert null.keys() == []
    assert isinstance(open_cache(None, print), NullCache)
    assert isinstance(open_cache(lab["redis"]["url"], print), RedisCache)
