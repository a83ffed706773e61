"""Where the lab keeps its state, what it names things, and which addresses it uses."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parents[2]
LAB_DIR = Path(os.environ.get("VMCTL_LAB_DIR", "/var/lib/vmctl-lab"))
CACHE_DIR = Path(os.environ.get("VMCTL_LAB_CACHE", "/var/cache/vmctl-lab"))
PREFIX = os.environ.get("VMCTL_LAB_PREFIX", "10.213")  # the lab uses PREFIX.0.0/16
PG_PORT = int(os.environ.get("VMCTL_LAB_PG_PORT", "15432"))
REDIS_PORT = int(os.environ.get("VMCTL_LAB_REDIS_PORT", "16379"))
_API_BASE = int(os.environ.get("VMCTL_LAB_API_PORT_BASE", "18080"))
API_REPLICA_PORTS = (_API_BASE + 1, _API_BASE + 2)  # vmctl serve, on loopback
API_EXTERNAL_PORT = _API_BASE + 363  # HAProxy, TLS, on loopback (18443)
API_INTERNAL_PORT = _API_BASE - 80  # HAProxy, plain HTTP, on the lab bridge (18000)
# Monitoring (labkit.monitoring): HAProxy's monitoring frontend and watch-ip's metrics follow the
# API's ports; the exporters of the root namespace and Prometheus are on loopback, the node and
# libvirt exporters on each node's address (inside its namespace), the Ceph manager's prometheus
# module on the lab bridge address (where the manager runs).
HAPROXY_MONITORING_PORT = int(
    os.environ.get("VMCTL_LAB_HAPROXY_MONITORING_PORT", str(_API_BASE + 324))  # 18404
)
WATCH_IP_METRICS_PORT = int(os.environ.get("VMCTL_LAB_WATCH_IP_METRICS_PORT", str(_API_BASE + 389)))
PROMETHEUS_PORT = int(os.environ.get("VMCTL_LAB_PROMETHEUS_PORT", "19090"))
NODE_EXPORTER_PORT = int(os.environ.get("VMCTL_LAB_NODE_EXPORTER_PORT", "9100"))
LIBVIRT_EXPORTER_PORT = int(os.environ.get("VMCTL_LAB_LIBVIRT_EXPORTER_PORT", "9177"))
POSTGRES_EXPORTER_PORT = int(os.environ.get("VMCTL_LAB_POSTGRES_EXPORTER_PORT", "19187"))
REDIS_EXPORTER_PORT = int(os.environ.get("VMCTL_LAB_REDIS_EXPORTER_PORT", "19121"))
CEPH_METRICS_PORT = int(os.environ.get("VMCTL_LAB_CEPH_METRICS_PORT", "19283"))
SCRAPE_INTERVAL = "2s"  # also Prometheus's evaluation interval in the lab
BRIDGE = "vmlab0"
NETNS_PREFIX = "vmlab-"
GUEST_USER = "debian"
IMAGE_NAME = "debian-12"
GUEST_NETWORK = "vmnet"
GUEST_BRIDGE = "vmbr0"
PG_BIN = Path("/usr/lib/postgresql/15/bin")

STATE_FILE = LAB_DIR / "state.json"
BEFORE_FILE = LAB_DIR / "before.json"
SSH_DIR = LAB_DIR / "ssh"
SSH_KEY = SSH_DIR / "id_ed25519"
KNOWN_HOSTS = SSH_DIR / "known_hosts"
INVENTORY = LAB_DIR / "inventory.yaml"
NODES_DIR = LAB_DIR / "nodes"
WATCHER_DIR = LAB_DIR / "watch-ip"
WORKERS_DIR = LAB_DIR / "workers"
MONITORING_DIR = LAB_DIR / "monitoring"
QEMU_CAPS_CACHE = CACHE_DIR / "qemu-capabilities"


def lab_network() -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"{PREFIX}.0.0/16")


def bridge_address() -> str:
    return f"{PREFIX}.0.1"


@dataclass(frozen=True)
class LabHost:
    """A host on the lab bridge, in its own network namespace, with a routed guest subnet
    (index counts from 1). Its address is PREFIX.0.N and its guests' subnet PREFIX.N.0/24, with
    N = ``first_octet`` + index: each kind of host has its own block of N."""

    index: int
    kind: ClassVar[str] = "node"
    first_octet: ClassVar[int] = 10

    @property
    def name(self) -> str:
        return f"{self.kind}{self.index}"

    @property
    def octet(self) -> int:
        return self.first_octet + self.index

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.name}"

    @property
    def veth(self) -> str:  # the root-namespace end; the host's end is eth0
        return f"{NETNS_PREFIX}{self.name}"

    @property
    def address(self) -> str:
        return f"{PREFIX}.0.{self.octet}"

    @property
    def guest_subnet(self) -> str:
        return f"{PREFIX}.{self.octet}.0/24"

    @property
    def guest_gateway(self) -> str:
        return f"{PREFIX}.{self.octet}.1"

    @property
    def dhcp_range(self) -> tuple[str, str]:
        return f"{PREFIX}.{self.octet}.100", f"{PREFIX}.{self.octet}.254"

    @property
    def reserved_range(self) -> tuple[str, str]:
        """Where vmctl assigns addresses (DHCP reservations): below the dynamic range."""
        return f"{PREFIX}.{self.octet}.10", f"{PREFIX}.{self.octet}.99"

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": self.address,
            "ssh_port": 22,
            "ssh_user": "root",
            "netns": self.netns,
            "guest_subnet": self.guest_subnet,
            "guest_gateway": self.guest_gateway,
        }


@dataclass(frozen=True)
class Node(LabHost):
    """One virtualization node of the lab (daemons in namespaces, no systemd)."""

    @property
    def dir(self) -> Path:
        return NODES_DIR / self.name

    @property
    def storage(self) -> str:
        """Where the node keeps VM disks: node1 in a directory, the others in the lab's Ceph
        pool (so both backends are tested, and RBD VMs can move between nodes 2 and 3)."""
        return "dir" if self.index == 1 else "rbd"

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "libvirt_uri": f"qemu+ssh://root@{self.address}/system",
            "guest_network": GUEST_NETWORK,
            "storage": self.storage,
        }


def nodes(count: int) -> list[Node]:
    return [Node(i) for i in range(1, count + 1)]
