"""`vmctl watch-ip`'s metrics, and the HTTP server that serves them."""

from __future__ import annotations

import time
from collections.abc import Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from vmctl.core.errors import ConfigError

# Seconds from the node showing an address to its record: well under a second when all is well.
DELAY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Seconds from a VM's creation to its address: a boot, so tens of seconds (minutes under TCG).
WAIT_BUCKETS = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)


class PrometheusWatchMetrics:
    """The ``WatchMetrics`` port over prometheus-client, in ``registry``."""

    def __init__(self, registry: CollectorRegistry, nodes: list[str]) -> None:
        prefix = "vmctl_watch_ip"
        self.delay = Histogram(
            f"{prefix}_address_delay_seconds",
            "Seconds from a node showing a VM's address (lease written, ARP, agent) to its record",
            ["source"],
            buckets=DELAY_BUCKETS,
            registry=registry,
        )
        self.wait = Histogram(
            f"{prefix}_address_wait_seconds",
            "Seconds from a VM's creation to the record of its address",
            ["source"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.recorded = Counter(
            f"{prefix}_addresses_recorded",
            "Addresses recorded (new or changed)",
            ["source"],
            registry=registry,
        )
        self.connected = Gauge(
            f"{prefix}_node_connected",
            "1 when the last contact with the node (look, lease follower) worked, 0 if it failed",
            ["node"],
            registry=registry,
        )
        self.following = Gauge(
            f"{prefix}_node_following",
            "1 while the node's DHCP lease file is followed",
            ["node"],
            registry=registry,
        )
        self.reconnects = Counter(
            f"{prefix}_node_reconnects",
            "Times a look or the lease follower worked again after failing",
            ["node"],
            registry=registry,
        )
        self.last_pass = Gauge(
            f"{prefix}_node_last_pass_timestamp_seconds",
            "When the watcher last finished a pass over the node's VMs",
            ["node"],
            registry=registry,
        )
        self.drift_items = Gauge(
            f"{prefix}_reconcile_drift",
            "Drift found by the last reconcile report, per kind",
            ["kind"],
            registry=registry,
        )
        self.reconciled = Gauge(
            f"{prefix}_reconcile_last_run_timestamp_seconds",
            "When the last reconcile report ended",
            registry=registry,
        )
        self.store = Gauge(
            f"{prefix}_store_up", "1 while PostgreSQL answers the watcher", registry=registry
        )
        for node in nodes:  # known from the start (connected: only once the node was reached)
            self.following.labels(node).set(0)
            self.reconnects.labels(node)
        for source in ("lease", "arp", "agent"):
            self.recorded.labels(source)
            self.delay.labels(source)
            self.wait.labels(source)

    def address_recorded(self, source: str, delay_s: float, wait_s: float | None) -> None:
        self.recorded.labels(source).inc()
        self.delay.labels(source).observe(max(0.0, delay_s))
        if wait_s is not None:
            self.wait.labels(source).observe(max(0.0, wait_s))

    def node_connected(self, node: str, connected: bool) -> None:
        self.connected.labels(node).set(1 if connected else 0)

    def node_reconnected(self, node: str) -> None:
        self.reconnects.labels(node).inc()

    def node_following(self, node: str, following: bool) -> None:
        self.following.labels(node).set(1 if following else 0)

    def node_passed(self, node: str) -> None:
        self.last_pass.labels(node).set(time.time())

    def drift(self, counts: Mapping[str, int]) -> None:
        for kind, count in counts.items():
            self.drift_items.labels(kind).set(count)
        self.reconciled.set(time.time())

    def store_up(self, up: bool) -> None:
        self.store.set(1 if up else 0)


def serve(host: str, port: int, registry: CollectorRegistry) -> tuple[str, int]:
    """Serve ``registry`` at http://HOST:PORT/metrics from a thread of its own; the address
    bound (port 0: one the system picks). ConfigError when it cannot be bound."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"metrics: cannot listen on {host}:{port}: {exc.strerror}") from exc
    bound = server.server_address
    return str(bound[0]), int(bound[1])
