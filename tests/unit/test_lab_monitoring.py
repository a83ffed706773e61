"""The lab's monitoring without starting anything: what runs where, with which command line, and
how the lab's copy of the rules is kept (labkit.monitoring)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
from labkit import api, ceph, config, monitoring, services, watcher
from labkit.procs import Daemon
from labkit.sh import LabError

pytestmark = pytest.mark.unit

LAB = Path(__file__).resolve().parents[2] / "lab"


def test_each_node_gets_a_node_and_a_libvirt_exporter_on_its_own_address() -> None:
    nodes = config.nodes(3)
    exporters = monitoring.exporters(nodes)
    per_node = [e for e in exporters if e.node is not None]
    assert [(e.job, e.node.name, e.address) for e in per_node if e.node] == [
        (job, n.name, f"{n.address}:{port}")
        for n in nodes
        for job, port in (
            ("node", config.NODE_EXPORTER_PORT),
            ("libvirt", config.LIBVIRT_EXPORTER_PORT),
        )
    ]
    names = [e.name for e in exporters]
    assert len(set(names)) == len(names)
    assert "libvirt-exporter-node2" in names and "postgres-exporter" in names


def test_everything_listens_on_loopback_or_a_lab_address() -> None:
    lab = config.lab_network()
    addresses = [e.address for e in monitoring.exporters(config.nodes(9))]
    section = monitoring.inventory_section()
    addresses += [
        str(section["prometheus"]),
        str(section["haproxy"]),
        *(str(a) for a in section["watch_ip"]),  # type: ignore[attr-defined]
        *(str(a) for a in section["ceph"]),  # type: ignore[attr-defined]
    ]
    for address in addresses:
        ip = ipaddress.IPv4Address(address.rpartition(":")[0])
        assert ip.is_loopback or ip in lab, address


def test_node_exporters_run_in_the_nodes_namespaces() -> None:
    node_exporter, libvirt_exporter = monitoring.exporters(config.nodes(1))[:2]
    enter = ["nsenter", "--target=4242", "--mount", "--uts", "--net", "--"]
    argv = monitoring.exporter_argv(node_exporter, 4242)
    assert argv[:6] == enter
    assert argv[6] == "prometheus-node-exporter"
    assert f"--web.listen-address={node_exporter.address}" in argv
    argv = monitoring.exporter_argv(libvirt_exporter, 4242)
    assert argv[:6] == enter  # the node's mount namespace: its /run/libvirt/libvirt-sock
    assert argv[6:] == [
        "prometheus-libvirt-exporter",
        f"--web.listen-address={libvirt_exporter.address}",
        "--libvirt.uri=qemu:///system",
    ]
    with pytest.raises(LabError, match="libvirtd is not running"):
        monitoring.exporter_argv(libvirt_exporter, None)


def test_credentials_go_in_the_environment_not_on_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        services, "postgres_url", lambda: "postgresql://vmctl:pw1@127.0.0.1:1/vmctl"
    )
    monkeypatch.setattr(services, "redis_password", lambda: "pw2")
    postgres, redis = monitoring.exporters([])
    assert monitoring.exporter_env(postgres) == {
        "DATA_SOURCE_NAME": "postgresql://vmctl:pw1@127.0.0.1:1/vmctl?sslmode=disable"
    }
    assert monitoring.exporter_env(redis) == {"REDIS_PASSWORD": "pw2"}
    for exporter in (postgres, redis):
        argv = monitoring.exporter_argv(exporter)
        assert not any("pw" in arg for arg in argv), argv
    assert f"-redis.addr=redis://127.0.0.1:{config.REDIS_PORT}" in monitoring.exporter_argv(redis)


def test_prometheus_keeps_its_data_in_the_lab_directory_for_a_day() -> None:
    argv = monitoring.prometheus_argv()
    assert argv[0] == "prometheus"
    assert f"--config.file={monitoring.CONFIG_FILE}" in argv
    assert f"--storage.tsdb.path={monitoring.DATA_DIR}" in argv
    assert "--storage.tsdb.retention.time=1d" in argv
    assert f"--web.listen-address=127.0.0.1:{config.PROMETHEUS_PORT}" in argv
    assert monitoring.DATA_DIR.is_relative_to(config.LAB_DIR)


def test_the_inventory_section_names_every_target() -> None:
    section = monitoring.inventory_section()
    assert section["api"] == [api.replica_address(0), api.replica_address(1)]
    assert section["haproxy"] == api.monitoring_address()
    assert section["watch_ip"] == [watcher.metrics_address()]
    assert section["ceph"] == [ceph.metrics_address()]
    assert section["scrape_interval"] == section["evaluation_interval"] == "2s"


def test_the_ceph_module_is_told_the_bridge_address_and_the_labs_port() -> None:
    assert ceph.metrics_options() == {
        "server_addr": config.bridge_address(),
        "server_port": str(config.CEPH_METRICS_PORT),
        "scrape_interval": "2",
    }
    assert "mgr_initial_modules = iostat prometheus" in ceph.render_conf("f", Path("/x"), "1.2.3.4")


def test_ports_follow_the_environment() -> None:
    names = {
        "VMCTL_LAB_PROMETHEUS_PORT": "PROMETHEUS_PORT",
        "VMCTL_LAB_NODE_EXPORTER_PORT": "NODE_EXPORTER_PORT",
        "VMCTL_LAB_LIBVIRT_EXPORTER_PORT": "LIBVIRT_EXPORTER_PORT",
        "VMCTL_LAB_POSTGRES_EXPORTER_PORT": "POSTGRES_EXPORTER_PORT",
        "VMCTL_LAB_REDIS_EXPORTER_PORT": "REDIS_EXPORTER_PORT",
        "VMCTL_LAB_CEPH_METRICS_PORT": "CEPH_METRICS_PORT",
        "VMCTL_LAB_HAPROXY_MONITORING_PORT": "HAPROXY_MONITORING_PORT",
        "VMCTL_LAB_WATCH_IP_METRICS_PORT": "WATCH_IP_METRICS_PORT",
    }
    env = {**os.environ, **{var: str(20000 + i) for i, var in enumerate(names)}}
    code = (
        f"from labkit import config; print(*(getattr(config, n) for n in {list(names.values())}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=LAB, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [str(20000 + i) for i in range(len(names))]


def test_the_labs_rules_are_the_repositorys_with_every_for_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.yml").write_text(
        "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n    for: 10m\n"
    )
    (source / "b.yml").write_text(
        "groups:\n- name: h\n  rules:\n  - alert: B\n    expr: up == 0\n    for: 2s\n"
    )
    monkeypatch.setattr(monitoring, "RULES_SOURCE", source)
    monkeypatch.setattr(monitoring, "RULES_DIR", tmp_path / "rules")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "gone.yml").write_text("groups: []\n")
    assert monitoring._write_rules() is True
    assert sorted(p.name for p in (tmp_path / "rules").iterdir()) == ["a.yml", "b.yml"]
    assert "for: 5s" in (tmp_path / "rules" / "a.yml").read_text()
    assert "for: 2s" in (tmp_path / "rules" / "b.yml").read_text()
    assert monitoring._write_rules() is False  # nothing changed: Prometheus is not reloaded


def test_a_daemon_is_kept_only_with_the_same_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = Daemon("x", tmp_path)
    stopped = []
    monkeypatch.setattr(Daemon, "pid", lambda self: 4242)
    monkeypatch.setattr(Daemon, "stop", lambda self: stopped.append(self.name))
    monkeypatch.setattr(monitoring, "cmdline", lambda pid: ["exporter", "--a"])
    # nsenter execs the exporter: its command line is what follows `--`
    assert monitoring._keep(daemon, ["nsenter", "--target=1", "--", "exporter", "--a"]) is True
    assert monitoring._keep(daemon, ["exporter", "--a"]) is True
    assert stopped == []
    assert monitoring._keep(daemon, ["exporter", "--b"]) is False
    assert stopped == ["x"]
