"""The lab's monitoring for real: the exporters `lab/lab up` starts (labkit.monitoring), seen
through the lab's own Prometheus (its HTTP API on loopback), and what `lab/lab status --json` and
`lab/lab env` say about them."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from typing import Any

import httpx
import pytest

from tests.conftest import LAB, eventually, lab_daemons_up

pytestmark = pytest.mark.integration

EXPORTER_JOBS = {"node", "libvirt", "postgres", "redis", "ceph", "haproxy", "prometheus"}
VMCTL_JOBS = {"vmctl-api", "vmctl-cloud", "vmctl-watch-ip"}


def prometheus(lab: dict[str, Any], path: str, **params: str) -> Any:
    response = httpx.get(f"{lab['monitoring']['prometheus_url']}{path}", params=params, timeout=10)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]


def targets(lab: dict[str, Any]) -> list[dict[str, Any]]:
    return prometheus(lab, "/api/v1/targets", state="active")["activeTargets"]  # type: ignore[no-any-return]


def query(lab: dict[str, Any], expr: str) -> list[dict[str, Any]]:
    return prometheus(lab, "/api/v1/query", query=expr)["result"]  # type: ignore[no-any-return]


def test_status_json_lists_prometheus_and_every_exporter(lab: dict[str, Any]) -> None:
    mon = lab["monitoring"]
    assert mon["up"] is True, json.dumps(mon, indent=2)
    assert mon["prometheus_url"].startswith("http://127.0.0.1:")
    assert mon["prometheus"]["up"] and mon["prometheus"]["pid"]
    exporters = mon["exporters"]
    for node in lab["nodes"]:
        for job in ("node", "libvirt"):
            entry = exporters[f"{job}-exporter-{node['name']}"]
            assert entry["job"] == job and entry["node"] == node["name"]
            assert entry["address"].startswith(f"{node['address']}:")
            assert entry["up"] and entry["pid"], entry
    for name in ("postgres-exporter", "redis-exporter", "ceph-mgr"):
        assert exporters[name]["up"] and exporters[name]["pid"], exporters[name]
    assert exporters["ceph-mgr"]["pid"] == lab["ceph"]["pids"]["mgr.x"]


def test_env_exports_the_prometheus_url(lab: dict[str, Any]) -> None:
    env = subprocess.run([str(LAB), "env"], capture_output=True, text=True, check=True).stdout
    exported = dict(line.removeprefix("export ").split("=", 1) for line in env.splitlines())
    assert exported["VMCTL_LAB_PROMETHEUS_URL"] == lab["monitoring"]["prometheus_url"]
    assert httpx.get(f"{exported['VMCTL_LAB_PROMETHEUS_URL']}/-/ready").status_code == 200


def test_every_target_is_up_in_prometheus(lab: dict[str, Any]) -> None:
    lab_daemons_up()  # a test before may have stopped a replica or restarted the watcher
    expected = EXPORTER_JOBS | VMCTL_JOBS

    def all_up() -> list[dict[str, Any]]:
        found = targets(lab)
        jobs = {t["labels"]["job"] for t in found}
        return found if jobs == expected and all(t["health"] == "up" for t in found) else []

    try:
        found = eventually("every target up", all_up)
    except AssertionError:
        summary = [
            (t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"]) for t in targets(lab)
        ]
        raise AssertionError(f"expected jobs {sorted(expected)} all up; got {summary}") from None
    by_job: dict[str, int] = {}
    for target in found:
        by_job[target["labels"]["job"]] = by_job.get(target["labels"]["job"], 0) + 1
    assert by_job["node"] == by_job["libvirt"] == len(lab["nodes"])
    assert by_job["vmctl-api"] == len(lab["api"]["replicas"])
    assert by_job["vmctl-cloud"] == 1  # scraped once, through HAProxy


def test_every_node_has_node_and_libvirt_targets_with_its_label(lab: dict[str, Any]) -> None:
    found = targets(lab)
    exporters = lab["monitoring"]["exporters"]
    for job in ("node", "libvirt"):
        labelled = {
            t["labels"]["node"]: t["labels"]["instance"] for t in found if t["labels"]["job"] == job
        }
        # at the node's address (its ssh.host in the inventory), on the exporter's port
        assert labelled == {
            n["name"]: exporters[f"{job}-exporter-{n['name']}"]["address"] for n in lab["nodes"]
        }
        assert all(labelled[n["name"]].startswith(f"{n['address']}:") for n in lab["nodes"])
    # the node exporter answers from inside the node: its hostname is the node's
    uname = eventually(
        "node_uname_info of every node",
        lambda: (r := query(lab, "node_uname_info")) and len(r) == len(lab["nodes"]) and r,
    )
    assert {r["metric"]["node"]: r["metric"]["nodename"] for r in uname} == {
        n["name"]: n["name"] for n in lab["nodes"]
    }


def test_each_libvirt_exporter_reports_its_own_nodes_domains(
    lab: dict[str, Any], booted: list[Any]
) -> None:
    up = eventually(
        "libvirt_up of every node",
        lambda: (r := query(lab, "libvirt_up == 1")) and len(r) == len(lab["nodes"]) and r,
    )
    assert {r["metric"]["node"] for r in up} == {n["name"] for n in lab["nodes"]}
    for guest in booted:
        here = guest.node["name"]

        def seen(name: str = guest.name) -> list[dict[str, Any]]:
            return query(lab, f'libvirt_domain_info_virtual_cpus{{domain="{name}"}}')

        found = eventually(f"{guest.name} in the libvirt metrics", seen)
        # only the node that runs the guest reports it: each exporter talks to its node's libvirtd
        assert [r["metric"]["node"] for r in found] == [here]
        assert float(found[0]["value"][1]) == guest.cpu


def test_the_ceph_postgres_and_redis_exporters_reach_their_services(lab: dict[str, Any]) -> None:
    for expr in ("pg_up == 1", "redis_up == 1", "ceph_health_status == 0"):
        eventually(expr, lambda e=expr: query(lab, e))  # type: ignore[misc]
    assert query(lab, 'ceph_pool_metadata{name="vms"}')


def _listening(netns: str | None = None) -> list[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    out = subprocess.run(
        [*prefix, "ss", "-Htln"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[3] for line in out.splitlines()]


def test_monitoring_listens_only_on_loopback_and_lab_addresses(lab: dict[str, Any]) -> None:
    mon = lab["monitoring"]
    ports = {e["address"].rpartition(":")[2] for e in mon["exporters"].values()}
    ports |= {mon["prometheus_url"].rpartition(":")[2], mon["haproxy"].rpartition(":")[2]}
    if mon["watch_ip"]:
        ports.add(mon["watch_ip"].rpartition(":")[2])
    lab_net = ipaddress.IPv4Network(f"{lab['prefix']}.0.0/16")
    sockets = _listening() + [a for n in lab["nodes"] for a in _listening(n["netns"])]
    ours = [a for a in sockets if a.rpartition(":")[2] in ports]
    assert len(ours) >= len(ports)
    for address in ours:
        ip = ipaddress.ip_address(address.rpartition(":")[0].strip("[]"))
        assert ip.is_loopback or ip in lab_net, f"{address} listens beyond the lab"
