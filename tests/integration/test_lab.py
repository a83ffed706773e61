"""The lab tested for real: nodes over SSH, per-node libvirt, guests, isolation, services."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import LAB

pytestmark = pytest.mark.integration


def ssh_node(
    lab: dict,
    node: dict,
    *command: str,
    known_hosts: str | None = None,  # type: ignore[type-arg]
) -> subprocess.CompletedProcess[str]:
    import guests

    return subprocess.run(
        [
            "ssh",
            *guests.ssh_options(lab["ssh"]["key"], known_hosts or lab["ssh"]["known_hosts"]),
            f"root@{node['address']}",
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def in_node(node: dict, *command: str) -> str:  # type: ignore[type-arg]
    return subprocess.run(
        ["ip", "netns", "exec", node["netns"], *command], capture_output=True, text=True, check=True
    ).stdout


def test_each_node_answers_ssh_with_host_key_checking(lab: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    for node in lab["nodes"]:
        proc = ssh_node(lab, node, "hostname")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == node["name"]
    # The check is really on: an empty known_hosts file is refused.
    empty = tmp_path / "empty_known_hosts"
    empty.touch()
    proc = ssh_node(lab, lab["nodes"][0], "true", known_hosts=str(empty))
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr


def test_status_and_env_describe_the_lab(lab: dict) -> None:  # type: ignore[type-arg]
    assert len(lab["nodes"]) == 3
    assert {"name", "address", "guest_subnet"} <= set(lab["nodes"][0])
    env = subprocess.run([str(LAB), "env"], capture_output=True, text=True, check=True).stdout
    exported = dict(line.removeprefix("export ").split("=", 1) for line in env.splitlines())
    for key in (
        "VMCTL_INVENTORY",
        "VMCTL_DATABASE_URL",
        "VMCTL_REDIS_URL",
        "VMCTL_SSH_KEY",
        "VMCTL_KNOWN_HOSTS",
        "LAB_SSH_KEY",
        "LAB_KNOWN_HOSTS",
        "LAB_GUEST_USER",
    ):
        assert key in exported
    assert Path(exported["LAB_SSH_KEY"]).exists()
    assert exported["LAB_GUEST_USER"] == "debian"
    assert Path(exported["VMCTL_INVENTORY"]).read_text().count("- name: node") == 3


def test_postgres_and_redis_answer(lab: dict) -> None:  # type: ignore[type-arg]
    import psycopg
    import redis

    with psycopg.connect(lab["postgres"]["url"], connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "vmctl",
            "vmctl",
        )
        assert conn.execute("SHOW port").fetchone() == (str(lab["postgres"]["port"]),)
    client = redis.Redis.from_url(lab["redis"]["url"], socket_timeout=5)
    assert client.ping() is True
    # Never the distribution's default ports.
    assert lab["postgres"]["port"] != 5432 and lab["redis"]["port"] != 6379


def test_each_node_has_its_own_libvirt(lab: dict, booted: list) -> None:  # type: ignore[type-arg]
    listed = {}
    for node in lab["nodes"]:
        proc = ssh_node(lab, node, "virsh", "-q", "list", "--all", "--name")
        assert proc.returncode == 0, proc.stderr
        listed[node["name"]] = set(proc.stdout.split())
    for guest in booted:
        here = guest.node["name"]
        assert guest.name in listed[here]
        assert all(guest.name not in names for n, names in listed.items() if n != here)


def test_guest_disks_are_a_cow_overlay_and_a_data_disk(lab: dict, booted: list) -> None:  # type: ignore[type-arg]
    for guest in booted:
        vmdir = f"/var/lib/libvirt/images/vmctl/{guest.name}"
        proc = ssh_node(
            lab, guest.node, "qemu-img", "info", "-U", "--output=json", f"{vmdir}/root.qcow2"
        )
        info = json.loads(proc.stdout)
        assert info["backing-filename"] == "/var/lib/libvirt/images/base/debian-12.qcow2"
        assert info["virtual-size"] == 4 * 2**30


def test_guest_got_a_lease_on_its_nodes_subnet(booted: list) -> None:  # type: ignore[type-arg]
    for guest in booted:
        subnet = ipaddress.IPv4Network(guest.node["guest_subnet"])
        assert ipaddress.IPv4Address(guest.ip) in subnet
        assert (guest.mac, guest.ip) in guest.hv.addresses(guest.name, "lease")


def test_guest_accepts_the_injected_key_and_has_the_seeded_hostname(
    lab: dict,
    booted: list,
    guest_known_hosts: Path,  # type: ignore[type-arg]
) -> None:
    import guests

    for guest in booted:
        proc = subprocess.run(
            guests.ssh_command(
                guest,
                lab,
                guest_known_hosts,
                "hostname; nproc; lsblk -bdno SIZE /dev/vdb; findmnt -no SOURCE /",
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        hostname, cpus, data_size, root = proc.stdout.split()
        assert hostname == guest.name
        assert int(cpus) == guest.cpu
        assert int(data_size) == guest.data_gb * 2**30
        assert root == "/dev/vda1"


def test_manager_reaches_every_guest_on_port_22(booted: list) -> None:  # type: ignore[type-arg]
    for guest in booted:
        proc = subprocess.run(
            ["bash", "-c", f"exec 3<>/dev/tcp/{guest.ip}/22 && head -c 7 <&3"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert proc.stdout == "SSH-2.0"


def test_nothing_routes_guest_packets_out_of_the_lab(
    lab: dict,
    booted: list,
    guest_known_hosts: Path,  # type: ignore[type-arg]
) -> None:
    """Shown from routing tables and forwarding settings, never by sending packets outside."""
    import guests

    lab_net = ipaddress.IPv4Network(f"{lab['prefix']}.0.0/16")
    for node in lab["nodes"]:
        # The node knows only lab routes: no default route, nothing beyond the lab's /16.
        routes = json.loads(in_node(node, "ip", "-j", "route", "show", "table", "all"))
        for route in routes:
            dst = route["dst"]
            if route.get("table") == "local" or ":" in dst:
                continue
            assert dst != "default", f"{node['name']} has a default route"
            net = ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32")
            assert net.subnet_of(lab_net), f"{node['name']} routes {dst} outside the lab"
        # No NAT: the guest network is routed, never masqueraded.
        nat = in_node(node, "iptables-save", "-t", "nat")
        assert "MASQUERADE" not in nat and "SNAT" not in nat
    # The root namespace routes guest subnets only to lab nodes, and does not forward.
    for node in lab["nodes"]:
        route = json.loads(
            subprocess.run(
                ["ip", "-j", "route", "show", node["guest_subnet"]],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert route and route[0]["gateway"] == node["address"]
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0"
    # Inside each guest, the only way out is its node's gateway.
    for guest in booted:
        proc = subprocess.run(
            guests.ssh_command(guest, lab, guest_known_hosts, "ip -j route"),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        defaults = [r for r in json.loads(proc.stdout) if r["dst"] == "default"]
        assert [r["gateway"] for r in defaults] == [guest.node["guest_gateway"]]


def test_bare_hosts_route_only_inside_the_lab(lab: dict) -> None:  # type: ignore[type-arg]
    """Bare hosts get packages through the lab's proxy, never straight from outside: their routes
    stay inside the lab's /16 (from their routing tables, never by sending packets out)."""
    assert len(lab["bare"]["hosts"]) >= 2, "run `lab/lab up --bare`"
    lab_net = ipaddress.IPv4Network(f"{lab['prefix']}.0.0/16")
    for host in lab["bare"]["hosts"]:
        assert host["up"], host
        routes = json.loads(
            subprocess.run(
                ["ip", "-n", host["netns"], "-j", "route", "show", "table", "main"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert routes
        for route in routes:
            dst = route["dst"]
            assert dst != "default", f"{host['name']} has a default route"
            assert ipaddress.IPv4Network(dst).subnet_of(lab_net), f"{host['name']} routes {dst}"
    assert lab["bare"]["proxy"]["up"]
    assert lab["bare"]["proxy"]["url"].startswith(f"http://{lab['bridge']['address']}:")


def test_reset_bare_names_an_unknown_host_and_changes_nothing(lab: dict) -> None:  # type: ignore[type-arg]
    before = [h["name"] for h in lab["bare"]["hosts"]]
    proc = subprocess.run(
        [str(LAB), "reset-bare", "bare99"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "no bare host bare99 (the lab has " in proc.stderr, proc.stderr
    status = json.loads(
        subprocess.run([str(LAB), "status", "--json"], capture_output=True, text=True).stdout
    )
    assert [h["name"] for h in status["bare"]["hosts"] if h["up"]] == before


LAB_DAEMONS = (
    "libvirtd",
    "virtlogd",
    "dnsmasq",
    "qemu-system",
    "postgres",
    "redis-server",
    "ceph-mon",
    "ceph-mgr",
    "ceph-osd",
    "prometheus",  # Prometheus and every prometheus-*-exporter
    "/var/lib/vmctl-lab",
)


def _lab_pids(lab: dict) -> set[int]:  # type: ignore[type-arg]
    from labkit import services

    pids = set()
    for node in lab["nodes"]:
        out = subprocess.run(
            ["ip", "netns", "pids", node["netns"]], capture_output=True, text=True
        ).stdout
        pids |= {int(p) for p in out.split()}
    pids |= {int(p) for p in lab["ceph"]["pids"].values()}  # ceph-mon, ceph-mgr, ceph-osd
    monitoring = lab["monitoring"]  # Prometheus, the exporters (the nodes' are in their netns)
    pids |= {int(e["pid"]) for e in monitoring["exporters"].values() if e["pid"]}
    if monitoring["prometheus"]["pid"]:
        pids.add(int(monitoring["prometheus"]["pid"]))
    for main in (services.postgres_pid(), services.redis_pid()):
        if main:
            pids.add(main)
            children = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True)
            pids |= {int(p) for p in children.stdout.split()}
    return pids


def _monitoring_ports(lab: dict) -> set[str]:  # type: ignore[type-arg]
    """ADDRESS:PORT of Prometheus, every exporter, HAProxy's monitoring frontend, watch-ip's
    metrics."""
    monitoring = lab["monitoring"]
    found = {e["address"] for e in monitoring["exporters"].values()}
    found |= {monitoring["prometheus_url"].removeprefix("http://"), monitoring["haproxy"]}
    if monitoring["watch_ip"]:
        found.add(monitoring["watch_ip"])
    return found


def _listening_ports(lab: dict) -> set[str]:  # type: ignore[type-arg]
    """Every listening TCP ADDRESS:PORT in the root namespace and (while they exist) the nodes'."""
    found = set()
    namespaces = [None, *(n["netns"] for n in lab["nodes"])]
    for netns in namespaces:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        proc = subprocess.run([*prefix, "ss", "-Htln"], capture_output=True, text=True)
        found |= {line.split()[3] for line in proc.stdout.splitlines()}
    return found


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.lab_teardown
@pytest.mark.skipif(
    os.environ.get("VMCTL_LAB_KEEP") == "1",
    reason="the lab was up before the tests (make demo, someone's VMs): it is kept, not taken down;"
    " a run that brings the lab up itself (CI) runs this test",
)
def test_up_is_idempotent_and_down_restores_the_machine(lab: dict) -> None:  # type: ignore[type-arg]
    from labkit import config, snapshot

    def daemon_pids() -> list[str]:
        ceph_pids = (config.LAB_DIR / "ceph" / "daemons").glob("*.pid")
        monitoring_pids = config.MONITORING_DIR.glob("*.pid")  # Prometheus, exporters
        bare_pids = (config.LAB_DIR / "bare").glob("*/*.pid")  # nspawn, apt-cacher-ng
        found = [*config.NODES_DIR.glob("*/*.pid"), *ceph_pids, *monitoring_pids, *bare_pids]
        return sorted(p.read_text() for p in found)

    pids = daemon_pids()
    assert len(list(config.MONITORING_DIR.glob("*.pid"))) == 1 + 2 * len(lab["nodes"]) + 2
    subprocess.run([str(LAB), "up"], check=True)
    assert daemon_pids() == pids, "a second `up` restarted daemons"
    ports = _monitoring_ports(lab)
    assert ports <= _listening_ports(lab), "monitoring is not listening"

    # A node whose daemons died without `down` (killed, the lab interrupted) left its guest bridge
    # in its namespace; `up` brings it back whole, guest network included.
    node = lab["nodes"][-1]
    netns_pids = subprocess.run(["ip", "netns", "pids", node["netns"]], capture_output=True)
    for pid in netns_pids.stdout.split():
        subprocess.run(["kill", "-KILL", pid.decode()], check=False)
    subprocess.run([str(LAB), "up"], check=True)
    active = ssh_node(lab, node, "virsh", "-q", "net-list", "--name")
    assert active.returncode == 0, active.stderr
    assert "vmnet" in active.stdout.split()

    before = json.loads(config.BEFORE_FILE.read_text())
    lab_pids = _lab_pids(lab)
    assert len(lab_pids) >= 3 * len(lab["nodes"]) + 2  # virtlogd, libvirtd, sshd per node; services
    subprocess.run([str(LAB), "down"], check=True)
    after = snapshot.machine_state()
    for key in ("netns", "links", "routes", "mounts", "iptables", "ceph_files", "nspawn"):
        assert after[key] == before[key], key
    assert [p for p in lab_pids if Path(f"/proc/{p}").exists()] == []
    new = set(after["pids"]) - set(before["pids"])
    stray = [c for c in map(_cmdline, new) if any(d in c for d in LAB_DAEMONS)]
    stray += [c for c in map(_cmdline, new) if "systemd-nspawn" in c or "apt-cacher-ng" in c]
    assert stray == []
    ceph_daemons = subprocess.run(["pgrep", "-a", "^ceph-(mon|mgr|osd)$"], capture_output=True)
    assert ceph_daemons.returncode == 1, ceph_daemons.stdout  # no Ceph daemon at all
    assert not config.LAB_DIR.exists()  # the cluster's conf, keyrings, data, logs, sockets
    assert ports & _listening_ports(lab) == set(), "a monitoring port still listens"
    # Safe to run twice.
    subprocess.run([str(LAB), "down"], check=True)


def test_up_refuses_a_range_that_collides_and_makes_nothing(tmp_path: Path) -> None:
    import os

    state = tmp_path / "lab-state"
    env = {**os.environ, "VMCTL_LAB_DIR": str(state), "VMCTL_LAB_PREFIX": "127.0"}
    proc = subprocess.run([str(LAB), "up"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "127.0.0.1/8 on lo overlaps the lab's 127.0.0.0/16" in proc.stderr
    assert "VMCTL_LAB_PREFIX" in proc.stderr
    assert not state.exists()
