"""Prometheus metrics (prometheus-client): the watcher's (``watch``), the API replicas' own
(``requests``) and the cloud's as PostgreSQL records it (``cloud``). Each takes the registry to
put its metrics in, so tests and several apps in one process never share counters."""

from __future__ import annotations

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry


def process_registry() -> CollectorRegistry:
    """A registry with prometheus-client's process, platform and garbage collector metrics."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry
