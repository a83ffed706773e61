"""vmctl's metrics as the lab's processes serve them: each replica's /metrics, the cloud's
/metrics/cloud through HAProxy's monitoring frontend, watch-ip's; every one passes `promtool check
metrics`, and the cloud's figures agree with PostgreSQL whichever replica answers."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import lab_daemons_up

pytestmark = pytest.mark.integration


def scrape(url: str) -> str:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, (url, response.status_code, response.text[:200])
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def endpoints(lab: dict[str, Any]) -> dict[str, str]:
    lab_daemons_up()  # a test before may have stopped a replica or restarted the watcher
    monitoring = lab["monitoring"]
    urls = {f"replica {r['url']}": f"{r['url']}/metrics" for r in lab["api"]["replicas"]}
    urls["cloud"] = f"http://{monitoring['haproxy']}/metrics/cloud"
    urls["watch-ip"] = f"http://{monitoring['watch_ip']}/metrics"
    return urls


def test_every_vmctl_metrics_endpoint_passes_promtool(lab: dict[str, Any]) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run lab/setup-host.sh"
    problems = {}
    for what, url in endpoints(lab).items():
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=scrape(url), capture_output=True, text=True
        )
        if checked.returncode != 0 or checked.stdout.strip():
            problems[what] = checked.stdout + checked.stderr
    assert problems == {}


def names(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


def test_each_endpoint_serves_its_own_metrics_only(lab: dict[str, Any]) -> None:
    """Replica metrics per replica, the cloud's once: a replica's /metrics holds no cloud figure
    (so scraping every replica never counts a VM twice), and the cloud's no request counter."""
    urls = endpoints(lab)
    replica = names(scrape(next(u for w, u in urls.items() if w.startswith("replica"))))
    cloud = names(scrape(urls["cloud"]))
    watch = names(scrape(urls["watch-ip"]))
    assert {"vmctl_api_requests", "vmctl_api_request_duration_seconds"} <= replica
    assert {"vmctl_vms", "vmctl_creates", "vmctl_node_capacity_cpus"} <= cloud
    assert {"vmctl_watch_ip_address_delay_seconds", "vmctl_watch_ip_node_connected"} <= watch
    assert not any(n.startswith("vmctl_vm") or n.startswith("vmctl_create") for n in replica)
    assert not any(n.startswith("vmctl_api") for n in cloud)


def test_the_cloud_figures_match_postgresql_on_every_replica(
    lab: dict[str, Any], vmctl_env: dict[str, str]
) -> None:
    from vmctl.adapters.store import PgStore

    lab_daemons_up()
    with PgStore(vmctl_env["VMCTL_DATABASE_URL"]) as store:
        recorded = len(store.list())
        nodes = {node["name"] for node in lab["nodes"]}
    for replica in lab["api"]["replicas"]:
        text = scrape(f"{replica['url']}/metrics/cloud")
        vms = sum(
            s.value
            for family in text_string_to_metric_families(text)
            if family.name == "vmctl_vms"
            for s in family.samples
        )
        assert vms == recorded  # every state of every node, each VM once
        capacity = {
            s.labels["node"]
            for family in text_string_to_metric_families(text)
            if family.name == "vmctl_node_capacity_cpus"
            for s in family.samples
        }
        assert capacity == nodes
