"""The cloud's report (``vmctl.services.metrics``) in Prometheus' text format."""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from vmctl.core.records import OperationFigures
from vmctl.services.metrics import DURATION_BOUNDS_S, CloudReport

STATES = ("creating", "running", "stopped", "deleting", "error")
RESULTS = ("ok", "failed")


def text(report: CloudReport) -> bytes:
    """``report`` as one scrape's body."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Report(report))
    return generate_latest(registry)


class _Report(Collector):
    def __init__(self, report: CloudReport) -> None:
        self.report = report

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        yield from self._vms()
        yield from self._capacity()
        yield from self._operations()

    def _vms(self) -> Iterator[GaugeMetricFamily]:
        records = self.report.records
        vms = GaugeMetricFamily(
            "vmctl_vms", "VMs recorded, by node and state", labels=["node", "state"]
        )
        waiting = GaugeMetricFamily(
            "vmctl_vms_waiting_for_address",
            "Creating or running VMs without a confirmed address",
            labels=["node"],
        )
        nodes = [n.node for n in self.report.nodes]
        for node in sorted(set(nodes) | {node for node, _ in records.vms}):
            for state in STATES:  # every state, 0 when none: no gaps in graphs
                vms.add_metric([node, state], records.vms.get((node, state), 0))
            waiting.add_metric([node], records.waiting.get(node, 0))
        yield vms
        yield waiting

    def _capacity(self) -> Iterator[GaugeMetricFamily]:
        families = {
            name: GaugeMetricFamily(f"vmctl_node_{name}", help_, labels=["node"])
            for name, help_ in (
                ("capacity_cpus", "vCPUs that may be booked on the node (capacity * overcommit)"),
                ("allocated_cpus", "vCPUs booked by the node's VMs"),
                ("capacity_memory_bytes", "RAM that may be booked on the node"),
                ("allocated_memory_bytes", "RAM booked by the node's VMs"),
                ("capacity_disk_bytes", "Disk that may be booked on the node (local storage)"),
                ("allocated_disk_bytes", "Disk booked by the node's VMs (local storage)"),
            )
        }
        for n in self.report.nodes:
            for name, family in families.items():
                value = getattr(n, name)
                if value is not None:
                    family.add_metric([n.node], value)
        yield from families.values()
        capacity = GaugeMetricFamily(
            "vmctl_pool_capacity_disk_bytes",
            "Disk that may be booked in shared storage (its room * ratio), asked of its cluster",
            labels=["pool"],
        )
        allocated = GaugeMetricFamily(
            "vmctl_pool_allocated_disk_bytes",
            "Disk booked in shared storage by the VMs of all its nodes",
            labels=["pool"],
        )
        for p in self.report.pools:
            if p.capacity_disk_bytes is not None:
                capacity.add_metric([p.pool], p.capacity_disk_bytes)
            allocated.add_metric([p.pool], p.allocated_disk_bytes)
        yield capacity
        yield allocated

    def _operations(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        records = self.report.records
        ops = {(o.action, o.result): o for o in records.operations}
        for action, what in (("create", "Creates"), ("delete", "Deletes")):
            total = CounterMetricFamily(
                f"vmctl_{action}s", f"{what} that ended, by result", labels=["result"]
            )
            duration = HistogramMetricFamily(
                f"vmctl_{action}_duration_seconds",
                f"Seconds {what.lower()} took, by result",
                labels=["result"],
            )
            for result in RESULTS:
                # Every bucket of every result from the start: a bucket series that appeared
                # with its first create would miss that create in rate() while +Inf counts it,
                # and histogram_quantile() would answer the highest bound.
                none = OperationFigures(
                    action, result, 0, 0, 0.0, DURATION_BOUNDS_S, (0,) * len(DURATION_BOUNDS_S)
                )
                o = ops.get((action, result), none)
                total.add_metric([result], o.count)
                buckets = [(_bound(b), n) for b, n in zip(o.bounds_s, o.at_most, strict=True)]
                duration.add_metric([result], [*buckets, ("+Inf", o.timed)], o.seconds)
            yield total
            yield duration
        rollbacks = CounterMetricFamily(
            "vmctl_create_rollbacks",
            "Failed creates whose rollback removed everything (clean) or left work (incomplete)",
            labels=["outcome"],
        )
        for outcome in ("clean", "incomplete"):
            rollbacks.add_metric([outcome], records.rollbacks.get(outcome, 0))
        yield rollbacks


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))
