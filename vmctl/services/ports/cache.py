"""The port of Redis: which node holds which VM (a hint), and the IP channel."""

from __future__ import annotations

from typing import Any, Protocol

# -- Redis ------------------------------------------------------------------------------------


class SubscriptionLost(Exception):
    """The IP channel is gone (Redis went away): poll PostgreSQL from then on."""


class Subscription(Protocol):
    def get(self, timeout: float) -> dict[str, Any] | None:
        """The next message (a dict), or None after ``timeout`` s; SubscriptionLost if the
        channel is gone."""
        ...

    def close(self) -> None: ...


class Cache(Protocol):
    """Which node holds which VM (a hint: PostgreSQL decides), and the IP channel."""

    def get_node(self, name: str) -> str | None: ...

    def set_node(self, name: str, node: str) -> None: ...

    def forget(self, name: str) -> None: ...

    def keys(self) -> list[str]: ...

    def publish_ip(self, message: dict[str, Any]) -> None: ...

    def subscribe_ip(self) -> Subscription | None: ...
