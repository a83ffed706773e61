"""deploy/ansible on bare lab hosts: from fresh Debian hosts (systemd as PID 1, sshd, python3,
nothing of vmctl's; `lab/lab up --bare`) to a working vmctl cloud, over their real SSH.

bare1 gets the node role, bare2 the manager role (site.yml, one inventory.yaml for vmctl and
Ansible). Both are reset to fresh hosts first, so the roles install everything for real (packages
through the lab's package proxy). Then: a second run changes nothing; testinfra checks what the
roles left; the manager's systemd units stop and start; the manager's own vmctl creates a VM on
bare1, its watch-ip records the address, vmctl logs in, and deletes it; the API answers /readyz
through the manager's HAProxy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import eventually

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "deploy" / "ansible"
LAB = REPO / "lab" / "lab"
VMCTL = "/opt/vmctl/venv/bin/vmctl"
API_PORTS = (8081, 8082)
VM = "e2e-ansible-1"  # on the dir node
VM_RBD = "e2e-ansible-rbd-1"  # on the RBD node
RECAP = re.compile(
    r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class BareCloud:
    """The bare hosts, the files the playbook reads and how to reach the hosts."""

    def __init__(self, lab: dict[str, Any], work: Path) -> None:
        hosts = lab["bare"]["hosts"]
        if len(hosts) < 3:
            pytest.fail("the lab has fewer than 3 bare hosts: run `lab/lab up --bare`")
        self.node, self.manager, self.rbd_node = hosts[0], hosts[1], hosts[2]
        self.ceph = lab["ceph"]
        self.lab = lab
        self.work = work
        self.key = lab["ssh"]["key"]
        self.known_hosts = lab["ssh"]["known_hosts"]
        self.image_src = Path(lab["image"]["dir"]) / "disk.qcow2"
        self.image_sha256 = _sha256(self.image_src)
        self.image_path = "/var/lib/libvirt/images/base/debian-12.qcow2"
        self.inventory = work / "inventory.yaml"
        self.vars = work / "vars.yml"

    # --- the files --------------------------------------------------------------------------

    def _node_entry(self, node: dict[str, Any], storage: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": node["name"],
            "ssh": {"host": node["address"], "port": 22, "user": "root"},
            "virt_type": "qemu",
            "capacity": {"cpu": 2, "ram_mb": 4096, "disk_gb": 40},
            "overcommit": {"cpu": 4.0, "ram": 1.0, "disk": 1.0},
            "storage": storage,
            "network": {
                "name": "vmnet",
                "subnet": node["guest_subnet"],
                "gateway": node["guest_gateway"],
                "managed": True,
                "addresses": {
                    "first": node["reserved_range"][0],
                    "last": node["reserved_range"][1],
                },
            },
        }

    def write_inventory(self) -> None:
        mgr = self.manager
        self.inventory.write_text(
            yaml.safe_dump(
                {
                    "defaults": {
                        "image": "debian-12",
                        "ram_mb": 512,
                        "cpu": 1,
                        "disk_gb": 1,
                        "root_gb": 4,
                    },
                    "images": {
                        "debian-12": {
                            "path": self.image_path,
                            "default_user": self.lab["image"]["default_user"],
                            "boot": "disk",
                        }
                    },
                    "nodes": [
                        self._node_entry(
                            self.node, {"type": "dir", "path": "/var/lib/libvirt/images/vmctl"}
                        ),
                        # the lab's Ceph cluster; the base image is in its pool already
                        self._node_entry(
                            self.rbd_node,
                            {
                                "type": "rbd",
                                "pool": self.ceph["pool"],
                                "monitors": [self.ceph["monitor"]],
                                "user": self.ceph["client"].removeprefix("client."),
                                "secret_uuid": self.ceph["libvirt_secret_uuid"],
                                "keyring": f"/etc/ceph/ceph.{self.ceph['client']}.keyring",
                                "path": "/var/lib/libvirt/images/vmctl",
                                "ratio": 10.0,
                            },
                        ),
                    ],
                    "managers": [
                        {
                            "name": mgr["name"],
                            "ssh": {"host": mgr["address"], "port": 22, "user": "root"},
                        }
                    ],
                    "monitoring": {
                        "prometheus": "127.0.0.1:9090",
                        "api": [f"127.0.0.1:{port}" for port in API_PORTS],
                        "haproxy": "127.0.0.1:8404",
                        "watch_ip": ["127.0.0.1:9469"],
                        "rule_files": ["/etc/prometheus/rules/vmctl/*.yml"],
                    },
                },
                sort_keys=False,
            )
        )

    def write_vars(self, wheel: Path, wheelhouse: Path, pem: Path) -> None:
        keyring = Path(self.ceph["dir"]) / f"ceph.{self.ceph['client']}.keyring"
        key = re.search(r"key\s*=\s*(\S+)", keyring.read_text())
        assert key, keyring
        self.vars.write_text(
            yaml.safe_dump(
                {
                    "vmctl_node_network_dns": False,
                    "vmctl_node_dnsmasq_options": ["no-ping"],
                    # a container's cgroup controllers are read-only (docs/deploy.md, "Lab")
                    "vmctl_node_qemu_conf": {"cgroup_controllers": "[ ]"},
                    "vmctl_node_image_files": [
                        {
                            "image": "debian-12",
                            "src": str(self.image_src),
                            "sha256": self.image_sha256,
                        }
                    ],
                    "ceph_client_key": key[1],  # Ansible Vault on a real site
                    "vmctl_manager_wheel": str(wheel),
                    "vmctl_manager_wheelhouse": str(wheelhouse),
                    "vmctl_manager_tls_pem": str(pem),
                    "vmctl_manager_external_bind": f"{self.manager['address']}:443",
                    "vmctl_manager_internal_bind": f"{self.manager['address']}:8000",
                }
            )
        )

    # --- running things ---------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VMCTL_", "ANSIBLE_"))}
        env.update(
            PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
            HOME=str(self.work),
            VMCTL_CONFIG=str(self.work / "none.toml"),
            VMCTL_INVENTORY=str(self.inventory),
            ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
            ANSIBLE_PRIVATE_KEY_FILE=self.key,
            ANSIBLE_HOST_KEY_CHECKING="true",
            ANSIBLE_SSH_ARGS=(
                f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes "
                "-o ControlMaster=auto -o ControlPersist=60s"
            ),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
        )
        return env

    def playbook(self) -> subprocess.CompletedProcess[str]:
        log = self.work / f"ansible-{time.time():.0f}.log"
        proc = subprocess.run(
            ["ansible-playbook", "site.yml", "-e", f"@{self.vars}"],
            cwd=ANSIBLE_DIR,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=1500,
        )
        log.write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"ansible-playbook failed (log {log}):\n{proc.stdout[-6000:]}"
        return proc

    def ssh(self, host: dict[str, Any], command: str, check: bool = True) -> str:
        proc = subprocess.run(
            [
                "ssh",
                "-i",
                self.key,
                "-o",
                f"UserKnownHostsFile={self.known_hosts}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                f"root@{host['address']}",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if check:
            assert proc.returncode == 0, f"{command}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def vmctl(self, *args: str, check: bool = True) -> str:
        """The manager's own vmctl, as its vmctl user with its config (as an operator runs it)."""
        command = " ".join(shlex.quote(a) for a in (VMCTL, *args))
        return self.ssh(
            self.manager,
            f"cd / && sudo -u vmctl VMCTL_CONFIG=/etc/vmctl/config.toml {command}",
            check=check,
        )

    def testinfra(self, host: dict[str, Any]) -> Any:
        import testinfra

        return testinfra.get_host(
            f"ssh://root@{host['address']}",
            ssh_identity_file=self.key,
            ssh_extra_args=(
                f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes"
            ),
        )


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP of an ansible-playbook run: host → ok, changed, unreachable, failed."""
    found = {
        m[1]: {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])}
        for m in RECAP.finditer(output.split("PLAY RECAP", 1)[-1])
    }
    assert found, f"no PLAY RECAP in the output:\n{output[-3000:]}"
    return found


def _build_inputs(cloud: BareCloud) -> tuple[Path, Path, Path]:
    """The wheelhouse (vmctl's wheel and its dependencies) and HAProxy's certificate."""
    wheelhouse = cloud.work / "wheelhouse"
    proc = subprocess.run(
        [
            str(ANSIBLE_DIR / "build-wheelhouse.sh"),
            str(wheelhouse),
            f"{sys.executable} -m pip",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = Path(proc.stdout.strip().splitlines()[-1])
    pem = cloud.work / "api.pem"
    address = cloud.manager["address"]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={address}",
            "-addext",
            f"subjectAltName=IP:{address}",
            "-keyout",
            str(cloud.work / "api.key"),
            "-out",
            str(cloud.work / "api.crt"),
        ],
        check=True,
        capture_output=True,
    )
    pem.write_text((cloud.work / "api.crt").read_text() + (cloud.work / "api.key").read_text())
    return wheel, wheelhouse, pem


@pytest.fixture(scope="module")
def fresh(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> BareCloud:
    """bare1 and bare2 made fresh Debian hosts again, whatever an earlier run left on them."""
    work = tmp_path_factory.mktemp("bare-cloud")
    probe = BareCloud(lab, work)
    subprocess.run(
        [str(LAB), "reset-bare", probe.node["name"], probe.manager["name"], probe.rbd_node["name"]],
        check=True,
        capture_output=True,
        timeout=300,
    )
    status = json.loads(
        subprocess.run(
            [str(LAB), "status", "--json"], check=True, capture_output=True, text=True
        ).stdout
    )
    return BareCloud(status, work)  # the new host keys are in known_hosts now


@pytest.fixture(scope="module")
def cloud(fresh: BareCloud) -> Iterator[BareCloud]:
    """The playbook run twice on the fresh hosts."""
    cloud = fresh
    cloud.write_inventory()
    cloud.write_vars(*_build_inputs(cloud))
    cloud.first = cloud.playbook()  # type: ignore[attr-defined]
    cloud.second = cloud.playbook()  # type: ignore[attr-defined]
    yield cloud
    cloud.vmctl("delete", "--yes", VM, VM_RBD, check=False)


def test_bare_hosts_are_fresh_debian_hosts(fresh: BareCloud) -> None:
    """What the roles start from: systemd as PID 1 with nothing failed, sshd, python3, and
    nothing of vmctl's (no libvirt, no QEMU, no PostgreSQL, no vmctl user)."""
    for bare in (fresh.node, fresh.manager, fresh.rbd_node):
        host = fresh.testinfra(bare)
        assert host.check_output("ps -o comm= -p 1") == "systemd"
        state = host.run("systemctl is-system-running --wait")
        assert state.stdout.strip() == "running", state.stdout + host.check_output(
            "systemctl --failed --no-legend"
        )
        assert host.service("ssh").is_running
        assert host.check_output("cat /etc/hostname") == bare["name"]
        assert host.run("python3 --version").rc == 0
        for package in ("libvirt-daemon-system", "qemu-system-x86", "postgresql", "haproxy"):
            assert not host.package(package).is_installed, f"{bare['name']}: {package}"
        assert not host.user("vmctl").exists
        assert not host.file("/opt/vmctl").exists
    ids = {
        fresh.testinfra(b).check_output("cat /etc/machine-id") for b in (fresh.node, fresh.manager)
    }
    assert len(ids) == 2, "every host has its own machine-id"


def test_first_run_prepares_every_host_and_the_second_changes_nothing(cloud: BareCloud) -> None:
    first = recap(cloud.first.stdout)  # type: ignore[attr-defined]
    second = recap(cloud.second.stdout)  # type: ignore[attr-defined]
    hosts = {cloud.node["name"], cloud.manager["name"], cloud.rbd_node["name"]}
    assert set(first) == hosts and set(second) == hosts
    for host in hosts:
        assert first[host]["failed"] == first[host]["unreachable"] == 0
        assert first[host]["changed"] > 5, f"{host}: a fresh host must have been changed"
        assert second[host]["failed"] == second[host]["unreachable"] == 0
        assert second[host]["changed"] == 0, f"{host} changed on the second run:\n" + "\n".join(
            line
            for line in cloud.second.stdout.splitlines()
            if line.startswith("changed:")  # type: ignore[attr-defined]
        )


def test_the_node_is_what_the_role_says(cloud: BareCloud) -> None:
    host = cloud.testinfra(cloud.node)
    for service in (
        "libvirtd",
        "virtlogd",
        "prometheus-node-exporter",
        "prometheus-libvirt-exporter",
    ):
        assert host.service(service).is_running, service
        assert host.service(service).is_enabled, service
    for package in ("libvirt-daemon-system", "qemu-system-x86", "qemu-utils", "genisoimage"):
        assert host.package(package).is_installed, package
    storage = host.file("/var/lib/libvirt/images/vmctl")
    assert storage.is_directory and storage.user == "root" and storage.mode == 0o755
    image = host.file(cloud.image_path)
    assert image.is_file and image.mode == 0o644 and image.user == "root"
    assert image.sha256sum == cloud.image_sha256
    net = host.run("virsh -c qemu:///system net-info vmnet")
    assert net.rc == 0 and re.search(r"Active:\s+yes", net.stdout), net.stdout
    assert re.search(r"Autostart:\s+yes", net.stdout), net.stdout
    xml = host.check_output("virsh -c qemu:///system net-dumpxml vmnet")
    assert "<forward mode='route'/>" in xml and cloud.node["guest_gateway"] in xml
    assert cloud.node["dhcp_range"][0] in xml
    manager_key = cloud.ssh(cloud.manager, "cat /var/lib/vmctl/.ssh/id_ed25519.pub").split()[1]
    authorized = host.file("/root/.ssh/authorized_keys")
    assert manager_key in authorized.content_string
    assert host.socket(f"tcp://{cloud.node['address']}:9100").is_listening
    assert host.socket(f"tcp://{cloud.node['address']}:9177").is_listening


def test_the_manager_is_what_the_role_says(cloud: BareCloud) -> None:
    host = cloud.testinfra(cloud.manager)
    units = [f"vmctl-api@{port}" for port in API_PORTS]
    for service in (
        "postgresql",
        "redis-server",
        "haproxy",
        "prometheus",
        "vmctl-watch-ip",
        "vmctl-worker@1",
        *units,
    ):
        assert host.service(service).is_running, service
        assert host.service(service).is_enabled, service
    config = host.file("/etc/vmctl/config.toml")
    assert config.user == "root" and config.group == "vmctl" and config.mode == 0o640
    key = host.file("/var/lib/vmctl/.ssh/id_ed25519")
    assert key.user == "vmctl" and key.mode == 0o600
    known = host.file("/var/lib/vmctl/.ssh/known_hosts").content_string
    assert cloud.node["address"] in known
    assert host.file("/etc/prometheus/rules/vmctl/vmctl-alerts.yml").is_file
    assert host.run(f"{VMCTL} --version").rc == 0
    # the schema is there: vmctl as its user reads it
    assert json.loads(cloud.vmctl("list", "-o", "json")) is not None


def test_the_units_stop_and_start(cloud: BareCloud) -> None:
    for unit in ("vmctl-watch-ip", f"vmctl-api@{API_PORTS[0]}", "vmctl-worker@1"):
        cloud.ssh(cloud.manager, f"systemctl stop {unit}")
        state = cloud.ssh(cloud.manager, f"systemctl is-active {unit}", check=False).strip()
        assert state == "inactive", f"{unit} after stop: {state}"
        cloud.ssh(cloud.manager, f"systemctl start {unit}")
        eventually(
            f"{unit} active again",
            lambda unit=unit: (
                cloud.ssh(cloud.manager, f"systemctl is-active {unit}", check=False).strip()
                == "active"
            ),
            timeout=30,
        )


def test_readyz_through_the_managers_haproxy(cloud: BareCloud) -> None:
    context = ssl.create_default_context(cafile=str(cloud.work / "api.crt"))
    url = f"https://{cloud.manager['address']}/readyz"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as response:
                return response.status == 200 and json.loads(response.read()) == {"status": "ready"}
        except OSError:  # not up yet (connection refused, 503 from HAProxy)
            return False

    eventually(f"{url} answers 200", ready, timeout=60)


def test_the_rbd_node_is_a_ceph_client(cloud: BareCloud) -> None:
    host = cloud.testinfra(cloud.rbd_node)
    client = cloud.ceph["client"]
    for package in ("ceph-common", "qemu-block-extra", "libvirt-daemon-system"):
        assert host.package(package).is_installed, package
    keyring = host.file(f"/etc/ceph/ceph.{client}.keyring")
    assert keyring.user == "root" and keyring.mode == 0o600
    assert cloud.ceph["monitor"].split(":")[0] in host.file("/etc/ceph/ceph.conf").content_string
    uuid = cloud.ceph["libvirt_secret_uuid"]
    assert uuid in host.check_output("virsh -c qemu:///system secret-list")
    # the secret holds the same key as the keyring, and the user reaches the pool with it
    value = host.check_output(f"virsh -c qemu:///system secret-get-value {uuid}")
    assert value in keyring.content_string
    pool = cloud.ceph["pool"]
    assert host.run(f"rbd --id {client.removeprefix('client.')} -p {pool} ls").rc == 0
    assert not host.file(cloud.image_path).exists, "RBD nodes clone from the pool: no image file"


def _pool_images(cloud: BareCloud) -> list[str]:
    conf = str(Path(cloud.ceph["dir"]) / "ceph.conf")
    return subprocess.run(
        ["rbd", "-c", conf, "-p", cloud.ceph["pool"], "ls"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


def _remove_rbd_leftovers(cloud: BareCloud, name: str) -> None:
    """RBD images of ``name`` an interrupted earlier run left in the lab's pool (its manager, and
    so the record of them, was reset since)."""
    conf = ["-c", str(Path(cloud.ceph["dir"]) / "ceph.conf")]
    pool = cloud.ceph["pool"]
    for image in (i for i in _pool_images(cloud) if i.startswith(f"vmctl.{name}.")):
        subprocess.run(["rbd", *conf, "snap", "purge", f"{pool}/{image}"], capture_output=True)
        subprocess.run(["rbd", *conf, "rm", f"{pool}/{image}"], capture_output=True, check=True)


def test_vms_on_the_prepared_nodes_get_their_addresses_from_watch_ip(cloud: BareCloud) -> None:
    """One VM on each node the roles prepared (files, RBD), created at once by the manager's
    vmctl: placed, booted, its address recorded by the manager's watch-ip, logged into, deleted."""
    vms = {VM: cloud.node, VM_RBD: cloud.rbd_node}
    for name in vms:
        cloud.vmctl("delete", "--yes", name, check=False)
    _remove_rbd_leftovers(cloud, VM_RBD)

    def create(name: str) -> dict[str, Any]:
        node = vms[name]["name"]
        out = cloud.vmctl(
            "create", name, "--node", node, "--wait", "--wait-for", "ssh", "-o", "json"
        )
        made = json.loads(out)
        return made[0] if isinstance(made, list) else made  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=2) as pool:
        made = dict(zip(vms, pool.map(create, vms), strict=True))
    for name, vm in made.items():
        assert vm["node"] == vms[name]["name"] and vm["ip"], vm
        # recorded by the manager's watch-ip (a lease, the guest agent or ARP), not phone-home
        events = json.loads(cloud.vmctl("events", name, "-o", "json"))
        sources = [e["detail"].get("source") for e in events if e["action"] == "ip"]
        assert sources and sources[0] in ("lease", "agent", "arp"), events
        # vmctl logs in with the host key it recorded
        assert cloud.vmctl("ssh", name, "hostname").strip() == name
    assert f"vmctl.{VM_RBD}.root" in _pool_images(cloud), "the RBD node's VM boots from the pool"
    cloud.vmctl("delete", "--yes", *vms)
    listed = {vm["name"] for vm in json.loads(cloud.vmctl("list", "-o", "json"))}
    assert listed.isdisjoint(vms)
    for name, node in vms.items():
        domains = cloud.testinfra(node).check_output("virsh -c qemu:///system list --all --name")
        assert name not in domains
    assert not [i for i in _pool_images(cloud) if i.startswith(f"vmctl.{VM_RBD}.")]
