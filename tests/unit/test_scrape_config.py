"""`vmctl monitoring scrape-config`: Prometheus's configuration from the inventory (its nodes and
its `monitoring:` section), checked by promtool (Debian's package prometheus)."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from labkit import config, inventory, monitoring
from typer.testing import CliRunner

from vmctl.cli import app
from vmctl.core import scrape
from vmctl.core.errors import ConfigError
from vmctl.core.inventory import Inventory, Monitoring, load_inventory

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "defaults": {"image": "debian-12", "ram_mb": 512, "cpu": 1, "disk_gb": 1},
    "images": {"debian-12": {"path": "/img/debian.qcow2", "default_user": "debian"}},
    "nodes": [
        {
            "name": name,
            "ssh": {"host": host},
            "capacity": {"cpu": 4, "ram_mb": 8192, "disk_gb": 100},
            "storage": {"path": "/var/lib/vmctl"},
            "network": {"name": "vmnet", "subnet": f"10.20.{i}.0/24", "gateway": f"10.20.{i}.1"},
        }
        for i, (name, host) in enumerate(
            [("kvm1", "10.0.0.1"), ("kvm2", "kvm2.example.internal"), ("kvm3", "fd00::3")], 1
        )
    ],
}
MONITORING: dict[str, Any] = {
    "prometheus": "127.0.0.1:9090",
    "api": ["10.0.0.5:8080", "10.0.0.6:8080"],
    "haproxy": "10.0.0.4:8404",
    "watch_ip": ["10.0.0.5:9469"],
    "postgres_exporter": "10.0.0.5:9187",
    "redis_exporter": "10.0.0.5:9121",
    "ceph": ["10.0.0.7:9283", "10.0.0.8:9283"],
    "scrape_interval": "30s",
    "evaluation_interval": "1m",
    "rule_files": ["rules/*.yml"],
    "alertmanagers": ["127.0.0.1:9093"],
}


def inventory_with(monitoring_section: dict[str, Any] | None) -> Inventory:
    data = copy.deepcopy(BASE)
    if monitoring_section is not None:
        data["monitoring"] = monitoring_section
    return Inventory.model_validate(data)


def jobs(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in cfg["scrape_configs"]}


def targets(job: dict[str, Any]) -> list[str]:
    return [t for group in job["static_configs"] for t in group["targets"]]


@pytest.fixture
def rendered() -> dict[str, Any]:
    return scrape.scrape_config(inventory_with(MONITORING))


ALL_JOBS = ["prometheus", "vmctl-api", "vmctl-cloud", "haproxy", "vmctl-watch-ip", "node",
            "libvirt", "postgres", "redis", "ceph"]  # fmt: skip


def test_every_job_is_rendered_in_order(rendered: dict[str, Any]) -> None:
    assert list(jobs(rendered)) == ALL_JOBS


def test_vmctl_jobs_scrape_the_replicas_and_the_cloud_once_through_haproxy(
    rendered: dict[str, Any],
) -> None:
    by_name = jobs(rendered)
    assert targets(by_name["vmctl-api"]) == ["10.0.0.5:8080", "10.0.0.6:8080"]
    assert "metrics_path" not in by_name["vmctl-api"]  # Prometheus's default: /metrics
    assert targets(by_name["vmctl-cloud"]) == ["10.0.0.4:8404"]
    assert by_name["vmctl-cloud"]["metrics_path"] == "/metrics/cloud"
    assert targets(by_name["haproxy"]) == ["10.0.0.4:8404"]
    assert by_name["haproxy"]["metrics_path"] == "/metrics"
    assert targets(by_name["vmctl-watch-ip"]) == ["10.0.0.5:9469"]
    assert targets(by_name["prometheus"]) == ["127.0.0.1:9090"]


def test_every_node_gets_a_node_and_a_libvirt_target_at_its_ssh_address_with_its_label(
    rendered: dict[str, Any],
) -> None:
    by_name = jobs(rendered)
    for job, port in (("node", 9100), ("libvirt", 9177)):
        groups = by_name[job]["static_configs"]
        assert groups == [
            {"targets": [f"10.0.0.1:{port}"], "labels": {"node": "kvm1"}},
            {"targets": [f"kvm2.example.internal:{port}"], "labels": {"node": "kvm2"}},
            {"targets": [f"[fd00::3]:{port}"], "labels": {"node": "kvm3"}},
        ]


def test_exporter_ports_are_taken_from_the_section_and_null_drops_the_job() -> None:
    section = {**MONITORING, "node_exporter_port": 19100, "libvirt_exporter_port": None}
    by_name = jobs(scrape.scrape_config(inventory_with(section)))
    assert targets(by_name["node"])[0] == "10.0.0.1:19100"
    assert "libvirt" not in by_name


def test_services_intervals_rules_and_alertmanager(rendered: dict[str, Any]) -> None:
    by_name = jobs(rendered)
    assert targets(by_name["postgres"]) == ["10.0.0.5:9187"]
    assert targets(by_name["redis"]) == ["10.0.0.5:9121"]
    assert targets(by_name["ceph"]) == ["10.0.0.7:9283", "10.0.0.8:9283"]
    assert rendered["global"] == {"scrape_interval": "30s", "evaluation_interval": "1m"}
    assert rendered["rule_files"] == ["rules/*.yml"]
    assert rendered["alerting"] == {
        "alertmanagers": [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]
    }


def test_without_a_monitoring_section_only_the_nodes_are_scraped() -> None:
    inv = inventory_with(None)
    assert inv.monitoring == Monitoring()
    cfg = scrape.scrape_config(inv)
    assert list(jobs(cfg)) == ["node", "libvirt"]
    assert cfg["global"] == {"scrape_interval": "15s", "evaluation_interval": "15s"}
    assert "rule_files" not in cfg and "alerting" not in cfg


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("api", ["10.0.0.5"], "expected HOST:PORT like 10.20.0.5:9100"),
        ("api", ["10.0.0.5:8080", "10.0.0.5:8080"], "listed twice: 10.0.0.5:8080"),
        ("haproxy", "http://10.0.0.4:8404", "expected HOST:PORT"),
        ("haproxy", "10.0.0.4:0", "must be a number from 1 to 65535"),
        ("ceph", ["mgr_1:9283"], "expected HOST:PORT"),
        ("watch_ip", "10.0.0.5:9469", "Input should be a valid list"),
        ("postgres_exporter", "fd00::5:9187", "expected HOST:PORT"),
        ("node_exporter_port", 70000, "less than or equal to 65535"),
        ("scrape_interval", "15", "expected a Prometheus duration like 15s"),
        ("scrape_interval", "0s", "expected a Prometheus duration"),
        ("evaluation_interval", "1s1m", "expected a Prometheus duration"),
        ("alertmanager", ["127.0.0.1:9093"], "unknown key 'alertmanager'"),
    ],
)
def test_a_bad_section_is_refused_naming_the_key(
    tmp_path: Path, key: str, value: Any, message: str
) -> None:
    data = {**copy.deepcopy(BASE), "monitoring": {**MONITORING, key: value}}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_inventory(path)
    assert f"{path}: monitoring" in str(caught.value)
    assert message in str(caught.value)
    if key != "alertmanager":
        assert f"monitoring.{key}" in str(caught.value)


def test_good_addresses_are_accepted() -> None:
    section = {
        "api": ["localhost:8080", "[fd00::5]:8080", "api-1.example.internal:1"],
        "scrape_interval": "1m30s",
        "evaluation_interval": "500ms",
    }
    assert inventory_with(section).monitoring.api == section["api"]


def promtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run lab/setup-host.sh (Debian's package prometheus)"
    return subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )


def test_promtool_accepts_the_rendered_configuration(
    tmp_path: Path, rendered: dict[str, Any]
) -> None:
    (tmp_path / "rules").mkdir()  # the glob may match nothing
    path = tmp_path / "prometheus.yml"
    path.write_text(scrape.to_yaml(rendered))
    proc = promtool_check(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_the_cli_writes_what_promtool_accepts_for_the_lab_and_the_example(
    tmp_path: Path,
) -> None:
    lab_inventory = tmp_path / "lab-inventory.yaml"
    lab_inventory.write_text(inventory.render(config.nodes(3)))
    for source in (lab_inventory, REPO / "inventory.yaml"):
        output = tmp_path / f"{source.stem}.prometheus.yml"
        result = CliRunner().invoke(
            app,
            ["--inventory", str(source), "monitoring", "scrape-config", "--output", str(output)],
        )
        assert result.exit_code == 0, result.output
        proc = promtool_check(output)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert output.read_text().startswith("# Prometheus's configuration, generated by")


def test_the_cli_prints_to_stdout_and_reports_a_bad_inventory(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["--inventory", str(REPO / "inventory.yaml"), "monitoring", "scrape-config"]
    )
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert {"node", "libvirt"} <= set(jobs(printed))
    bad = tmp_path / "inventory.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "monitoring": {"api": ["nope"]}}))
    result = CliRunner().invoke(app, ["--inventory", str(bad), "monitoring", "scrape-config"])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert "monitoring.api[0]" in str(result.exception)


def test_the_lab_inventory_scrapes_every_lab_part() -> None:
    inv_text = inventory.render(config.nodes(3))
    cfg = scrape.scrape_config(Inventory.model_validate(yaml.safe_load(inv_text)))
    by_name = jobs(cfg)
    assert cfg["global"] == {"scrape_interval": "2s", "evaluation_interval": "2s"}
    assert targets(by_name["prometheus"]) == [monitoring.prometheus_address()]
    assert targets(by_name["vmctl-watch-ip"]) == [f"127.0.0.1:{config.WATCH_IP_METRICS_PORT}"]
    assert targets(by_name["vmctl-cloud"]) == [f"127.0.0.1:{config.HAPROXY_MONITORING_PORT}"]
    assert [g["labels"]["node"] for g in by_name["libvirt"]["static_configs"]] == [
        "node1",
        "node2",
        "node3",
    ]
    assert cfg["rule_files"] == [f"{monitoring.RULES_DIR}/*.yml"]


def test_the_commented_example_in_inventory_yaml_loads_once_uncommented() -> None:
    text = (REPO / "inventory.yaml").read_text()
    block = text[text.index("# monitoring:") :]
    section = yaml.safe_load(
        "\n".join(line[2:] if line.startswith("# ") else line for line in block.splitlines())
    )
    data = {**yaml.safe_load(text), **section}
    mon = Inventory.model_validate(data).monitoring
    assert mon.haproxy == "10.20.0.1:8404" and mon.alertmanagers == ["127.0.0.1:9093"]
    assert list(jobs(scrape.scrape_config(Inventory.model_validate(data)))) == ALL_JOBS
