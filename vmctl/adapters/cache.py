"""A Redis cache of which node holds which VM. PostgreSQL stays the source of truth.

The cache only saves a look-up: an entry may be missing or (after a failed ``forget`` while Redis
was away) out of date, so callers treat what ``get_node`` returns as a hint, and entries expire.
When Redis cannot be reached the cache warns once and then behaves as if it were empty; it never
raises.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from vmctl.core.errors import ConfigError
from vmctl.services.ports import Cache, Subscription, SubscriptionLost

T = TypeVar("T")

KEY_PREFIX = "vmctl:"
CONNECT_TIMEOUT_S = 0.5
SOCKET_TIMEOUT_S = 0.5
DEFAULT_TTL_S = 7 * 24 * 3600
RETRY_AFTER_S = 30.0  # after a failure, how long to work without Redis before trying again


IP_CHANNEL = f"{KEY_PREFIX}ip"  # JSON messages: {"name", "node", "ip", "previous", "source", "at"}


def node_key(name: str) -> str:
    return f"{KEY_PREFIX}vm:{name}:node"


class NullCache:
    """No cache at all: every look-up misses."""

    def get_node(self, name: str) -> str | None:
        return None

    def set_node(self, name: str, node: str) -> None:
        return None

    def forget(self, name: str) -> None:
        return None

    def keys(self) -> list[str]:
        return []

    def publish_ip(self, message: dict[str, Any]) -> None:
        return None

    def subscribe_ip(self) -> Subscription | None:
        return None


def _where(url: str) -> str:
    """``HOST:PORT`` (or the socket path) of a Redis URL, for messages: never the password."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return "(unparsable URL)"


class RedisCache:
    """The VM→node cache in Redis at ``url``; ``warn`` is told (once) when Redis is away."""

    def __init__(
        self,
        url: str,
        warn: Callable[[str], None],
        ttl_s: int = DEFAULT_TTL_S,
        retry_after_s: float = RETRY_AFTER_S,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self._where = _where(url)
        self._warn = warn
        self._notice = notice  # told when Redis is back (long-running processes)
        self._warned = False
        self._ttl_s = ttl_s
        self._retry_after_s = retry_after_s
        self._down_until = 0.0
        try:
            self._redis: redis.Redis = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=SOCKET_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                health_check_interval=0,
            )
        except ValueError as e:  # its message may quote the URL, password included
            raise ConfigError(f"the Redis URL for {self._where} is not valid") from e

    def _call(self, work: Callable[[redis.Redis], T], missing: T) -> T:
        """``work`` against Redis, or ``missing`` if Redis is unavailable."""
        if time.monotonic() < self._down_until:
            return missing
        try:
            result = work(self._redis)
        except redis.RedisError as e:
            self._down_until = time.monotonic() + self._retry_after_s
            # A command warns once; a long-running process (``notice`` given) at each failed
            # try, i.e. at most every ``retry_after_s``, since it cannot tell when Redis was back.
            if not self._warned or self._notice is not None:
                self._warned = True
                detail = str(e).strip() or type(e).__name__
                self._warn(
                    f"Redis at {self._where} is unavailable ({detail}); working from PostgreSQL"
                )
            return missing
        if self._warned and self._notice is not None:
            self._warned = False
            self._notice(f"Redis at {self._where} is reachable again")
        return result

    def get_node(self, name: str) -> str | None:
        value = self._call(lambda r: r.get(node_key(name)), None)
        return value if isinstance(value, str) else None

    def set_node(self, name: str, node: str) -> None:
        self._call(lambda r: r.set(node_key(name), node, ex=self._ttl_s), None)

    def forget(self, name: str) -> None:
        self._call(lambda r: r.delete(node_key(name)), None)

    def keys(self) -> list[str]:
        found: list[str] = self._call(
            lambda r: [str(key) for key in r.scan_iter(match=f"{KEY_PREFIX}*", count=500)], []
        )
        return sorted(found)

    def publish_ip(self, message: dict[str, Any]) -> None:
        self._call(lambda r: r.publish(IP_CHANNEL, json.dumps(message, default=str)), None)

    def subscribe_ip(self) -> Subscription | None:
        """Listen on the IP channel; None (after the usual warning) when Redis is away."""

        def subscribe(r: redis.Redis) -> Subscription:
            make: Any = r.pubsub  # annotated from redis 8 on, not before: either passes mypy
            pubsub = make(ignore_subscribe_messages=True)
            pubsub.subscribe(IP_CHANNEL)
            return _RedisSubscription(pubsub)

        return self._call(subscribe, None)

    def close(self) -> None:
        self._redis.close()


class _RedisSubscription:
    def __init__(self, pubsub: redis.client.PubSub) -> None:
        self._pubsub = pubsub

    def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            message = self._pubsub.get_message(timeout=timeout)
        except (redis.RedisError, OSError, ValueError) as e:
            raise SubscriptionLost(str(e)) from e
        if message is None or message.get("type") != "message":
            return None
        try:
            data = json.loads(message["data"])
        except (TypeError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def close(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError):
            self._pubsub.close()


def open_cache(
    url: str | None, warn: Callable[[str], None], notice: Callable[[str], None] | None = None
) -> Cache:
    """A RedisCache for ``url``, or a NullCache when no URL is configured. ``notice`` (for
    long-running processes) is told when Redis is back after an outage."""
    return RedisCache(url, warn, notice=notice) if url else NullCache()
