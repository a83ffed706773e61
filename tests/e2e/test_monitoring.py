"""Monitoring on the lab, end to end: after a real create (its address learned by the lab's
watch-ip), a create that fails on its node and rolls back, and a delete, every panel of the Grafana
dashboard and every recording and alert rule is sent to the lab's real Prometheus, and each must
return data. And an API replica stopped makes the replica-down alert fire, then clear."""

from __future__ import annotations

import json
import math
import secrets
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, eventually, lab_daemons_up, leftovers, run_vmctl

pytestmark = pytest.mark.e2e

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "vmctl.json"
RULES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))


def prometheus_url(lab: dict) -> str:  # type: ignore[type-arg]
    return str(lab["monitoring"]["prometheus"]["url"])


def query(base: str, expr: str) -> list[dict]:  # type: ignore[type-arg]
    """The result vector of an instant query (raises on a query Prometheus refuses)."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return result if isinstance(result, list) else [{"value": result}]


def has_numbers(result: list[dict]) -> bool:  # type: ignore[type-arg]
    return any(math.isfinite(float(r["value"][1])) for r in result)


@pytest.fixture(scope="module")
def exercised(lab: dict, booted: list, vmctl_env: dict[str, str], tmp_path_factory) -> str:  # type: ignore[type-arg,no-untyped-def]
    """The lab after a create (waited for its address), a failed create and a delete: the
    Prometheus URL."""
    lab_daemons_up()
    base = prometheus_url(lab)
    suffix = secrets.token_hex(3)
    good, bad = f"mon-{suffix}", f"mon-fail-{suffix}"
    created = run_vmctl(
        vmctl_env, "create", good, "--node", "node1", "--ram", "384", "--disk", "1",
        "--wait-for", "ip", "--timeout", "300",
    )  # fmt: skip
    try:
        assert created.returncode == 0, created.stderr
    finally:
        deleted = run_vmctl(vmctl_env, "delete", good, "--yes")
    assert deleted.returncode == 0, deleted.stderr

    # A create that fails on its node (its image's file is not there) and is rolled back.
    from labkit import inventory

    broken = tmp_path_factory.mktemp("monitoring") / "inventory.yaml"
    broken.write_text(inventory.with_missing_image(Path(vmctl_env["VMCTL_INVENTORY"]).read_text()))
    failed = run_vmctl(
        {**vmctl_env, "VMCTL_INVENTORY": str(broken)},
        "create", bad, "--node", "node1", "--image", inventory.MISSING_IMAGE, "--ram", "256",
    )  # fmt: skip
    assert failed.returncode != 0
    assert leftovers(lab, vmctl_env, [good, bad]) == {}

    # Prometheus has scraped all of it (the cloud's counters come from the event log).
    eventually(
        "the failed create and the delete in Prometheus",
        lambda: (
            has_numbers(query(base, 'vmctl_creates_total{result="failed"} > 0'))
            and has_numbers(query(base, 'vmctl_delete_duration_seconds_count{result="ok"} > 0'))
            and has_numbers(query(base, "vmctl_watch_ip_address_delay_seconds_count > 0"))
        ),
        timeout=90,
    )
    return base


def test_every_dashboard_panel_has_data(exercised: str) -> None:
    from labkit import promql

    panels = promql.dashboard_panels(DASHBOARD)
    assert len(panels) >= 20
    empty = []
    for panel in panels:
        for expr in panel.exprs:
            result = query(exercised, promql.grafana_to_promql(expr))
            if not has_numbers(result):
                empty.append(f"{panel.title!r}: {expr}")
    assert empty == [], "panels without data:\n" + "\n".join(empty)


def test_every_rule_names_series_that_exist(exercised: str) -> None:
    """Recording rules must return data as they are; an alert's expression is checked selector
    by selector (a healthy lab fires no alert, but each series it watches must exist)."""
    from labkit import promql

    rules = promql.rule_expressions(RULES)
    assert {r.kind for r in rules} == {"alert", "record"}
    names = set(query_names(exercised))
    missing = []
    for rule in rules:
        if rule.kind == "record" and not query(exercised, rule.expr):
            missing.append(f"record {rule.name}: {rule.expr}")
        for selector in promql.selectors(rule.expr):
            metric = selector.split("{", 1)[0]
            if metric and metric not in names:
                missing.append(f"{rule.kind} {rule.name}: no series named {metric}")
            elif not query(exercised, selector):
                missing.append(f"{rule.kind} {rule.name}: {selector} matches nothing")
    assert missing == [], "\n".join(missing)


def query_names(base: str) -> list[str]:
    with urllib.request.urlopen(f"{base}/api/v1/label/__name__/values", timeout=30) as response:
        return list(json.load(response)["data"])


def alert_states(base: str, name: str) -> list[dict]:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"{base}/api/v1/alerts", timeout=30) as response:
        alerts = json.load(response)["data"]["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == name]


def test_a_stopped_replica_fires_the_replica_down_alert_then_clears(lab: dict) -> None:  # type: ignore[type-arg]
    from labkit import api as lab_api
    from labkit import cli

    base = prometheus_url(lab)
    victim = lab_api.REPLICAS[0]
    address = lab_api.replica_address(0)
    lab_daemons_up()  # both replicas up (a test before may have left one down)
    eventually(
        "no VmctlApiReplicaDown before the test",
        lambda: alert_states(base, "VmctlApiReplicaDown") == [],
        timeout=60,
    )
    try:
        victim.stop()
        states = eventually(
            "VmctlApiReplicaDown pending or firing",
            lambda: [
                a["state"]
                for a in alert_states(base, "VmctlApiReplicaDown")
                if a["labels"].get("instance") == address
            ],
            timeout=60,
        )
        assert set(states) <= {"pending", "firing"}
        eventually(
            "VmctlApiReplicaDown firing",
            lambda: any(a["state"] == "firing" for a in alert_states(base, "VmctlApiReplicaDown")),
            timeout=60,
        )
    finally:
        lab_api.start(cli.vmctl_settings())
    eventually(
        "VmctlApiReplicaDown cleared",
        lambda: alert_states(base, "VmctlApiReplicaDown") == [],
        timeout=60,
    )
