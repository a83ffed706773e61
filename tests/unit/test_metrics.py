"""vmctl's own metrics without a lab: the cloud's report as Prometheus text (histograms
cumulative, every state and result present), the watcher's metrics as the watcher drives them,
the API replica's request metrics (by route template), and `promtool check metrics` on each."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_watcher_logic import (
    FAST,
    INVENTORY,
    MAC_A,
    T0,
    FakeCache,
    FakeStore,
    FollowingHypervisor,
    lease,
    run_until,
    vm,
)
from vmctl.adapters.metrics import cloud, process_registry
from vmctl.adapters.metrics.requests import RequestMetrics
from vmctl.adapters.metrics.watch import PrometheusWatchMetrics
from vmctl.core import validation
from vmctl.core.errors import InvalidInput
from vmctl.core.records import CloudFigures, OperationFigures
from vmctl.services.metrics import CloudReport, NodeFigures, PoolFigures
from vmctl.services.watcher import Watcher

pytestmark = pytest.mark.unit


def samples(text: str | bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = text.decode() if isinstance(text, bytes) else text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def promtool_check(text: bytes) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run lab/setup-host.sh (Debian package prometheus)"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.decode().strip() == "", checked.stdout.decode()  # no lint remark


REPORT = CloudReport(
    records=CloudFigures(
        vms={("node1", "running"): 3, ("node1", "creating"): 1, ("node2", "error"): 1},
        waiting={"node1": 1},
        operations=[
            OperationFigures("create", "ok", 5, 4, 40.0, (5.0, 10.0, 20.0), (1, 3, 4)),
            OperationFigures("create", "failed", 2, 2, 3.0, (5.0, 10.0, 20.0), (2, 2, 2)),
            OperationFigures("delete", "ok", 1, 0, 0.0, (5.0, 10.0, 20.0), (0, 0, 0)),
        ],
        rollbacks={"clean": 1, "incomplete": 1},
    ),
    nodes=[
        NodeFigures("node1", 8, 4, 8 << 30, 2 << 30, 100 << 30, 44 << 30),
        NodeFigures("node2", 8, 1, 8 << 30, 1 << 29, None, None),
    ],
    pools=[PoolFigures("rbd:vms", 200 << 30, 11 << 30)],
)


def test_the_cloud_report_as_prometheus_text() -> None:
    got = samples(cloud.text(REPORT))
    assert got[("vmctl_vms", (("node", "node1"), ("state", "running")))] == 3
    assert got[("vmctl_vms", (("node", "node2"), ("state", "running")))] == 0  # no gaps
    assert got[("vmctl_vms_waiting_for_address", (("node", "node1"),))] == 1
    assert got[("vmctl_node_allocated_memory_bytes", (("node", "node2"),))] == 1 << 29
    assert got[("vmctl_node_capacity_disk_bytes", (("node", "node1"),))] == 100 << 30
    assert ("vmctl_node_capacity_disk_bytes", (("node", "node2"),)) not in got  # in the pool
    assert got[("vmctl_pool_capacity_disk_bytes", (("pool", "rbd:vms"),))] == 200 << 30
    assert got[("vmctl_creates_total", (("result", "ok"),))] == 5
    assert got[("vmctl_creates_total", (("result", "failed"),))] == 2
    assert got[("vmctl_deletes_total", (("result", "failed"),))] == 0
    ok = (("result", "ok"),)
    buckets = {le: got[("vmctl_create_duration_seconds_bucket", (("le", le), *ok))]
               for le in ("5.0", "10.0", "20.0", "+Inf")}  # fmt: skip
    assert buckets == {"5.0": 1, "10.0": 3, "20.0": 4, "+Inf": 4}  # cumulative; timed only
    assert got[("vmctl_create_duration_seconds_count", ok)] == 4
    assert got[("vmctl_create_duration_seconds_sum", ok)] == 40.0
    assert got[("vmctl_create_rollbacks_total", (("outcome", "incomplete"),))] == 1


def test_the_cloud_report_passes_promtool() -> None:
    promtool_check(cloud.text(REPORT))


def test_an_empty_cloud_still_has_every_counter() -> None:
    empty = CloudReport(CloudFigures({}, {}, [], {}), [], [])
    got = samples(cloud.text(empty))
    for name in ("vmctl_creates_total", "vmctl_deletes_total"):
        assert got[(name, (("result", "ok"),))] == 0
        assert got[(name, (("result", "failed"),))] == 0
    assert got[("vmctl_create_rollbacks_total", (("outcome", "clean"),))] == 0


def test_every_bucket_of_every_result_exists_before_any_event() -> None:
    """A bucket series born with the first failed create would miss it in rate() while +Inf
    counts it: histogram_quantile() would then answer the highest bound (seen in the lab)."""
    from vmctl.services.metrics import DURATION_BOUNDS_S

    empty = CloudReport(CloudFigures({}, {}, [], {}), [], [])
    got = samples(cloud.text(empty))
    for name in ("vmctl_create_duration_seconds_bucket", "vmctl_delete_duration_seconds_bucket"):
        for result in ("ok", "failed"):
            les = {
                dict(labels)["le"]
                for n, labels in got
                if n == name and ("result", result) in labels
            }
            assert les == {*(repr(float(b)) for b in DURATION_BOUNDS_S), "+Inf"}


def watch_metrics() -> tuple[PrometheusWatchMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return PrometheusWatchMetrics(registry, ["kvm1", "kvm2"]), registry


def test_watch_metrics_start_with_every_node_and_source() -> None:
    """No series says a node is unreachable before it was tried (an idle node is not looked at:
    a 0 there would page someone)."""
    _metrics, registry = watch_metrics()
    got = samples(generate_latest(registry))
    assert ("vmctl_watch_ip_node_connected", (("node", "kvm2"),)) not in got  # not reached yet
    assert got[("vmctl_watch_ip_node_following", (("node", "kvm2"),))] == 0
    assert got[("vmctl_watch_ip_node_reconnects_total", (("node", "kvm1"),))] == 0
    assert got[("vmctl_watch_ip_addresses_recorded_total", (("source", "arp"),))] == 0
    promtool_check(generate_latest(registry))


def test_watch_metrics_count_what_they_are_told() -> None:
    metrics, registry = watch_metrics()
    metrics.address_recorded("lease", 0.2, 31.0)
    metrics.address_recorded("lease", 3.0, None)
    metrics.node_connected("kvm1", True)
    metrics.node_reconnected("kvm1")
    metrics.node_following("kvm1", True)
    metrics.drift({"orphan-dir": 2, "foreign": 0})
    metrics.store_up(False)
    got = samples(generate_latest(registry))
    lease_ = (("source", "lease"),)
    assert got[("vmctl_watch_ip_addresses_recorded_total", lease_)] == 2
    assert got[("vmctl_watch_ip_address_delay_seconds_count", lease_)] == 2
    assert got[("vmctl_watch_ip_address_delay_seconds_bucket", (("le", "0.25"), *lease_))] == 1
    assert got[("vmctl_watch_ip_address_wait_seconds_count", lease_)] == 1  # one wait known
    assert got[("vmctl_watch_ip_node_connected", (("node", "kvm1"),))] == 1
    assert got[("vmctl_watch_ip_node_reconnects_total", (("node", "kvm1"),))] == 1
    assert got[("vmctl_watch_ip_node_following", (("node", "kvm1"),))] == 1
    assert got[("vmctl_watch_ip_reconcile_drift", (("kind", "orphan-dir"),))] == 2
    assert got[("vmctl_watch_ip_reconcile_last_run_timestamp_seconds", ())] > 0
    assert got[("vmctl_watch_ip_store_up", ())] == 0


def test_the_running_watcher_feeds_its_metrics() -> None:
    """A lease followed on kvm1: the address's delay and wait observed, the node connected
    and followed, its last pass set."""
    import logging

    store = FakeStore([vm("a", MAC_A, state="creating")])
    store.vms["a"] = replace(store.vms["a"], created_at=T0 - timedelta(seconds=1))
    nodes = {
        "kvm1": FollowingHypervisor([[[lease(MAC_A, "10.20.1.10")]]]),
        "kvm2": FollowingHypervisor([]),
    }
    metrics, registry = watch_metrics()
    w = Watcher(
        INVENTORY,
        store,
        FakeCache(),
        lambda node: nodes[node.name],
        logging.getLogger("test-watch-ip"),
        sources=("lease", "arp"),
        timing=FAST,
        metrics=metrics,
    )
    run_until(w, lambda: store.vms["a"].ip_state == "confirmed")
    got = samples(generate_latest(registry))
    lease_ = (("source", "lease"),)
    assert got[("vmctl_watch_ip_addresses_recorded_total", lease_)] == 1
    assert got[("vmctl_watch_ip_address_delay_seconds_count", lease_)] == 1
    assert got[("vmctl_watch_ip_address_delay_seconds_sum", lease_)] < 5
    assert got[("vmctl_watch_ip_address_wait_seconds_count", lease_)] == 1
    assert got[("vmctl_watch_ip_node_connected", (("node", "kvm1"),))] == 1
    assert got[("vmctl_watch_ip_node_last_pass_timestamp_seconds", (("node", "kvm1"),))] > 0
    assert got[("vmctl_watch_ip_store_up", ())] == 1


def app_with_metrics() -> tuple[TestClient, CollectorRegistry]:
    app = FastAPI()
    registry = process_registry()
    app.add_middleware(RequestMetrics, registry=registry)

    @app.get("/api/v1/vm/{name}")
    def show(name: str) -> dict[str, str]:
        return {"name": name}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    return TestClient(app, raise_server_exceptions=False), registry


def test_requests_are_counted_by_route_template_and_status() -> None:
    client, registry = app_with_metrics()
    for name in ("a", "b", "c"):
        assert client.get(f"/api/v1/vm/{name}").status_code == 200
    assert client.get("/nowhere").status_code == 404
    assert client.get("/boom").status_code == 500
    got = samples(generate_latest(registry))
    route = (("method", "GET"), ("route", "/api/v1/vm/{name}"))
    assert got[("vmctl_api_requests_total", (*route, ("status", "200")))] == 3
    assert got[("vmctl_api_request_duration_seconds_count", route)] == 3
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert got[("vmctl_api_requests_total", unmatched)] == 1
    boom = (("method", "GET"), ("route", "/boom"), ("status", "500"))
    assert got[("vmctl_api_requests_total", boom)] == 1
    assert got[("vmctl_api_requests_in_flight", ())] == 0
    assert any(name == "process_resident_memory_bytes" for name, _ in got)
    promtool_check(generate_latest(registry))


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:9469", ("127.0.0.1", 9469)),
        ("[::1]:0", ("::1", 0)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
    ],
)
def test_listen_addresses(text: str, want: tuple[str, int]) -> None:
    assert validation.listen_address("metrics-listen", text) == want


@pytest.mark.parametrize("text", ["9469", ":9469", "host:", "host:http", "host:70000"])
def test_bad_listen_addresses_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="metrics-listen"):
        validation.listen_address("metrics-listen", text)


def test_serving_on_a_taken_port_is_a_config_error_naming_it() -> None:
    import socket
    import urllib.request

    from vmctl.adapters.metrics.watch import serve
    from vmctl.core.errors import ConfigError

    registry = CollectorRegistry()
    host, port = serve("127.0.0.1", 0, registry)  # a free port: served
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        assert response.status == 200
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{busy}"):
            serve("127.0.0.1", busy, registry)


def test_a_follower_that_fails_then_recovers_counts_a_reconnect() -> None:
    import logging

    from vmctl.core.errors import NodeUnreachable

    store = FakeStore([vm("a", MAC_A, state="creating")])
    nodes = {
        "kvm1": FollowingHypervisor(
            [NodeUnreachable("node kvm1: connection lost"), [[lease(MAC_A, "10.20.1.10")]]]
        ),
        "kvm2": FollowingHypervisor([]),
    }
    metrics, registry = watch_metrics()
    seen: list[float] = []
    real = metrics.node_connected

    def spy(node: str, connected: bool) -> None:
        if node == "kvm1":
            seen.append(1.0 if connected else 0.0)
        real(node, connected)

    metrics.node_connected = spy  # type: ignore[method-assign]
    w = Watcher(
        INVENTORY, store, FakeCache(), lambda node: nodes[node.name],
        logging.getLogger("test-watch-ip"), sources=("lease", "arp"), timing=FAST,
        metrics=metrics,
    )  # fmt: skip
    run_until(w, lambda: store.vms["a"].ip_state == "confirmed")  # after 1 s of backoff
    got = samples(generate_latest(registry))
    assert got[("vmctl_watch_ip_node_reconnects_total", (("node", "kvm1"),))] == 1
    assert 0.0 in seen and seen[-1] == 1.0  # down while the follower failed, then up
