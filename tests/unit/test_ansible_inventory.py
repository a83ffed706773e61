"""`vmctl ansible-inventory`: Ansible's dynamic inventory from inventory.yaml (its nodes, grouped
by storage type, and its `managers:`), and the `managers:` section of the inventory.
tests/integration/test_ansible_inventory.py reads the same output through Ansible itself."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmctl.core import ansible
from vmctl.core.errors import ConfigError
from vmctl.core.inventory import Inventory, load_inventory

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "ansible" / "inventory" / "vmctl.sh"
GROUPS = ["vmctl_nodes", "vmctl_dir_nodes", "vmctl_rbd_nodes", "vmctl_managers"]

RBD: dict[str, Any] = {
    "type": "rbd",
    "pool": "vms",
    "monitors": ["10.0.0.7", "10.0.0.8:3300"],
    "user": "libvirt",
    "secret_uuid": "3f1d2c4b-5a6e-4f70-8a9b-0c1d2e3f4a5b",
}


def node(name: str, i: int, storage: dict[str, Any], **ssh: Any) -> dict[str, Any]:
    return {
        "name": name,
        "ssh": {"host": f"10.0.0.{i}", **ssh},
        "virt_type": "qemu",
        "capacity": {"cpu": 4, "ram_mb": 8192, "disk_gb": 100},
        "storage": storage,
        "network": {
            "name": "vmnet",
            "subnet": f"10.20.{i}.0/24",
            "gateway": f"10.20.{i}.1",
            "managed": True,
            "addresses": {"first": f"10.20.{i}.10", "last": f"10.20.{i}.99"},
        },
    }


SMALL: dict[str, Any] = {
    "defaults": {"image": "debian-12", "ram_mb": 512, "cpu": 1, "disk_gb": 1},
    "images": {
        "debian-12": {"path": "/img/debian.qcow2", "default_user": "debian"},
        "tiny": {
            "path": "/img/tiny.qcow2",
            "default_user": "root",
            "boot": "kernel",
            "kernel": "/img/vmlinuz",
            "initrd": "/img/initrd.img",
            "cmdline": "console=ttyS0",
        },
    },
    "nodes": [
        node("kvm1", 1, {"type": "dir", "path": "/srv/vmctl"}, port=2222, user="admin"),
        node("kvm2", 2, dict(RBD)),
        node("kvm3", 3, {**RBD, "keyring": "/etc/ceph/vmctl.keyring", "ratio": 2.0}),
    ],
    "managers": [
        {"name": "mgr1", "ssh": {"host": "mgr1.example.internal"}},
        {"name": "kvm1", "ssh": {"host": "10.0.0.1", "port": 2222, "user": "admin"}},
    ],
    "monitoring": {"api": ["10.0.0.5:8080"], "node_exporter_port": 9101},
}


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def environment(inventory: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}
    env.update(VMCTL_CONFIG=str(tmp_path / "none.toml"), VMCTL_INVENTORY=str(inventory))
    return env


def vmctl(
    inventory: Path, tmp_path: Path, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmctl", "ansible-inventory", *args],
        capture_output=True,
        text=True,
        env=environment(inventory, tmp_path),
        cwd=cwd or tmp_path,
        timeout=60,
    )


def listed(inventory: Path, tmp_path: Path, *args: str) -> dict[str, Any]:
    proc = vmctl(inventory, tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # Ansible shows a script's stderr as an error
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def test_the_documented_example(tmp_path: Path) -> None:
    data = listed(REPO / "inventory.yaml", tmp_path, "--list")
    assert list(data) == ["_meta", "all", *GROUPS]
    assert data["all"] == {
        "children": GROUPS,
        "vars": {"vmctl_inventory_file": str(REPO / "inventory.yaml")},
    }
    assert data["vmctl_nodes"] == {"hosts": ["kvm1", "kvm2"]}
    assert data["vmctl_dir_nodes"] == {"hosts": ["kvm1", "kvm2"]}
    assert data["vmctl_rbd_nodes"] == {"hosts": []}
    assert data["vmctl_managers"] == {"hosts": []}
    hostvars = data["_meta"]["hostvars"]
    assert list(hostvars) == ["kvm1", "kvm2"]
    kvm1 = hostvars["kvm1"]
    assert kvm1["ansible_host"] == "kvm1.example.internal"
    assert (kvm1["ansible_port"], kvm1["ansible_user"]) == (22, "root")
    assert kvm1["vmctl_node"] == {
        "name": "kvm1",
        "virt_type": "kvm",
        "storage": {"type": "dir", "path": "/var/lib/libvirt/images/vmctl"},
        "network": {
            "name": "vmnet",
            "subnet": "10.20.1.0/24",
            "netmask": "255.255.255.0",
            "prefix": 24,
            "gateway": "10.20.1.1",
            "managed": True,
            "addresses": {"first": "10.20.1.10", "last": "10.20.1.99"},
            "dhcp_range": {"start": "10.20.1.100", "end": "10.20.1.254"},
        },
        "images": {
            "debian-12": {
                "path": "/var/lib/libvirt/images/base/debian-12-genericcloud-amd64.qcow2",
                "default_user": "debian",
                "boot": "disk",
                "kernel": None,
                "initrd": None,
                "cmdline": None,
            },
            "ubuntu-24.04": {
                "path": "/var/lib/libvirt/images/base/noble-server-cloudimg-amd64.img",
                "default_user": "ubuntu",
                "boot": "disk",
                "kernel": None,
                "initrd": None,
                "cmdline": None,
            },
        },
        "exporters": {"node_exporter_port": 9100, "libvirt_exporter_port": 9177},
    }


def test_without_an_option_it_lists(tmp_path: Path) -> None:
    path = write(tmp_path, SMALL)
    assert listed(path, tmp_path) == listed(path, tmp_path, "--list")


def test_groups_by_storage_type_and_managers(tmp_path: Path) -> None:
    data = listed(write(tmp_path, SMALL), tmp_path, "--list")
    assert {group: data[group]["hosts"] for group in GROUPS} == {
        "vmctl_nodes": ["kvm1", "kvm2", "kvm3"],
        "vmctl_dir_nodes": ["kvm1"],
        "vmctl_rbd_nodes": ["kvm2", "kvm3"],
        "vmctl_managers": ["mgr1", "kvm1"],
    }
    assert data["all"]["vars"] == {"vmctl_inventory_file": str(tmp_path / "inventory.yaml")}
    assert list(data["_meta"]["hostvars"]) == ["kvm1", "kvm2", "kvm3", "mgr1"]


def test_rbd_nodes_get_the_ceph_client_settings_but_no_key(tmp_path: Path) -> None:
    hostvars = listed(write(tmp_path, SMALL), tmp_path)["_meta"]["hostvars"]
    assert hostvars["kvm2"]["vmctl_node"]["storage"] == {
        "type": "rbd",
        "path": "/var/lib/libvirt/images/vmctl",
        "pool": "vms",
        "monitors": ["10.0.0.7", "10.0.0.8:3300"],
        "user": "libvirt",
        "secret_uuid": "3f1d2c4b-5a6e-4f70-8a9b-0c1d2e3f4a5b",
        "keyring": "/etc/ceph/ceph.client.libvirt.keyring",  # the default, spelled out
    }
    assert hostvars["kvm3"]["vmctl_node"]["storage"]["keyring"] == "/etc/ceph/vmctl.keyring"


def test_node_vars(tmp_path: Path) -> None:
    hostvars = listed(write(tmp_path, SMALL), tmp_path)["_meta"]["hostvars"]
    kvm1 = hostvars["kvm1"]
    assert (kvm1["ansible_host"], kvm1["ansible_port"], kvm1["ansible_user"]) == (
        "10.0.0.1",
        2222,
        "admin",
    )
    assert kvm1["vmctl_node"]["virt_type"] == "qemu"
    assert kvm1["vmctl_node"]["storage"] == {"type": "dir", "path": "/srv/vmctl"}
    assert kvm1["vmctl_node"]["images"]["tiny"] == {
        "path": "/img/tiny.qcow2",
        "default_user": "root",
        "boot": "kernel",
        "kernel": "/img/vmlinuz",
        "initrd": "/img/initrd.img",
        "cmdline": "console=ttyS0",
    }
    assert kvm1["vmctl_node"]["exporters"] == {
        "node_exporter_port": 9101,
        "libvirt_exporter_port": 9177,
    }


def test_manager_vars_and_a_manager_that_is_also_a_node(tmp_path: Path) -> None:
    hostvars = listed(write(tmp_path, SMALL), tmp_path)["_meta"]["hostvars"]
    mgr1 = hostvars["mgr1"]
    assert set(mgr1) == {"ansible_host", "ansible_port", "ansible_user", "vmctl_manager"}
    assert (mgr1["ansible_host"], mgr1["ansible_port"], mgr1["ansible_user"]) == (
        "mgr1.example.internal",
        22,
        "root",
    )
    assert mgr1["vmctl_manager"]["name"] == "mgr1"
    monitoring = mgr1["vmctl_manager"]["monitoring"]
    assert monitoring["api"] == ["10.0.0.5:8080"]
    assert monitoring["scrape_interval"] == "15s"
    kvm1 = hostvars["kvm1"]  # one machine, both roles: one host with both dicts
    assert {"vmctl_node", "vmctl_manager"} <= set(kvm1)
    assert kvm1["ansible_port"] == 2222


def test_host_prints_that_hosts_vars(tmp_path: Path) -> None:
    path = write(tmp_path, SMALL)
    everything = listed(path, tmp_path)["_meta"]["hostvars"]
    for name in ("kvm2", "mgr1", "kvm1"):
        assert listed(path, tmp_path, "--host", name) == everything[name]


def test_host_of_an_unknown_name_is_empty(tmp_path: Path) -> None:
    """Ansible's contract: `--host` prints a host's variables, or an empty dictionary."""
    proc = vmctl(write(tmp_path, SMALL), tmp_path, "--host", "nope")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "{}\n", "")


def test_list_and_host_together_is_a_usage_error(tmp_path: Path) -> None:
    proc = vmctl(write(tmp_path, SMALL), tmp_path, "--list", "--host", "kvm1")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "not both" in proc.stderr


def test_a_broken_inventory_is_a_clear_error(tmp_path: Path) -> None:
    data = copy.deepcopy(SMALL)
    data["nodes"][1]["capacity"]["cpu"] = "many"
    path = write(tmp_path, data)
    proc = vmctl(path, tmp_path, "--list")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        f"vmctl: error: {path}: node 'kvm2': capacity.cpu: "
        "Input should be a valid integer (got 'many')\n"
    )


def test_a_missing_inventory_is_a_clear_error(tmp_path: Path) -> None:
    proc = vmctl(tmp_path / "nowhere.yaml", tmp_path, "--list")
    assert proc.returncode == 2
    assert "nowhere.yaml: cannot read the inventory" in proc.stderr


def test_the_pure_function_matches_the_command(tmp_path: Path) -> None:
    path = write(tmp_path, SMALL)
    inventory = load_inventory(path)
    assert ansible.dynamic_inventory(inventory, source=str(path)) == listed(path, tmp_path)
    assert "vars" not in ansible.dynamic_inventory(inventory)["all"]
    assert ansible.host(inventory, "nope") == {}


# --- the wrapper Ansible runs -------------------------------------------------------------


def script(
    inventory: Path, tmp_path: Path, *args: str, path: str
) -> subprocess.CompletedProcess[str]:
    env = {**environment(inventory, tmp_path), "PATH": path}
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )


def test_the_wrapper_is_executable_and_passes_its_arguments(tmp_path: Path) -> None:
    assert SCRIPT.stat().st_mode & stat.S_IXUSR
    path = write(tmp_path, SMALL)
    bin_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    proc = script(path, tmp_path, "--host", "kvm2", path=bin_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == listed(path, tmp_path, "--host", "kvm2")
    proc = script(path, tmp_path, "--list", path=bin_path)
    assert json.loads(proc.stdout) == listed(path, tmp_path)


def test_the_wrapper_says_when_vmctl_is_not_on_path(tmp_path: Path) -> None:
    proc = script(write(tmp_path, SMALL), tmp_path, "--list", path="/nonexistent")
    assert proc.returncode == 127
    assert "vmctl is not on PATH" in proc.stderr


# --- the managers: section ----------------------------------------------------------------


def with_managers(managers: Any) -> dict[str, Any]:
    data = copy.deepcopy(SMALL)
    data["managers"] = managers
    return data


def test_managers_are_optional() -> None:
    data = copy.deepcopy(SMALL)
    del data["managers"]
    assert Inventory.model_validate(data).managers == []


@pytest.mark.parametrize(
    ("managers", "message"),
    [
        pytest.param(
            [{"name": "m1", "ssh": {"host": "a"}}, {"name": "m1", "ssh": {"host": "b"}}],
            "managers: duplicate manager name 'm1'",
            id="duplicate",
        ),
        pytest.param(
            [{"name": "kvm2", "ssh": {"host": "10.9.9.9"}}],
            "managers: 'kvm2' is also a node, with another ssh",
            id="node-name-other-ssh",
        ),
        pytest.param(
            [{"name": "Mgr_1", "ssh": {"host": "a"}}],
            "managers[0].name: invalid name 'Mgr_1'",
            id="bad-name",
        ),
        pytest.param(
            [{"name": "m1", "ssh": {"host": "a", "port": 0}}],
            "managers[0].ssh.port: Input should be greater than or equal to 1",
            id="bad-port",
        ),
        pytest.param(
            [{"name": "m1", "host": "a", "ssh": {"host": "a"}}],
            "managers[0]: unknown key 'host'",
            id="unknown-key",
        ),
        pytest.param([{"name": "m1"}], "managers[0]: missing key 'ssh'", id="no-ssh"),
        pytest.param({"m1": {}}, "managers: Input should be a valid list", id="not-a-list"),
    ],
)
def test_bad_managers_are_refused(tmp_path: Path, managers: Any, message: str) -> None:
    path = write(tmp_path, with_managers(managers))
    with pytest.raises(ConfigError) as caught:
        load_inventory(path)
    assert f"{path}: {message}" in str(caught.value)


def test_the_commented_managers_example_of_inventory_yaml(tmp_path: Path) -> None:
    lines, block = [], False
    for line in (REPO / "inventory.yaml").read_text().splitlines():
        block = line == "# managers:" or (block and line.startswith("#   "))
        lines.append(line.removeprefix("# ") if block else line)
    path = tmp_path / "inventory.yaml"
    path.write_text("\n".join(lines) + "\n")
    data = listed(path, tmp_path)
    assert data["vmctl_managers"] == {"hosts": ["mgr1"]}
    assert data["_meta"]["hostvars"]["mgr1"]["ansible_host"] == "mgr1.example.internal"


@pytest.mark.parametrize(
    ("subnet", "gateway", "first", "last", "expected"),
    [
        # the lab's layout: reservations low, the rest for the DHCP server
        ("10.20.1.0/24", "10.20.1.1", "10.20.1.10", "10.20.1.99", ("10.20.1.100", "10.20.1.254")),
        # reservations high: the run below them, without the gateway
        ("10.20.1.0/24", "10.20.1.1", "10.20.1.128", "10.20.1.254", ("10.20.1.2", "10.20.1.127")),
        # the gateway at the top splits nothing off the run below
        ("10.20.1.0/24", "10.20.1.254", "10.20.1.200", "10.20.1.253", ("10.20.1.1", "10.20.1.199")),
    ],
)
def test_the_dhcp_range_is_the_longer_run_outside_the_reserved_addresses(
    subnet: str, gateway: str, first: str, last: str, expected: tuple[str, str]
) -> None:
    from vmctl.core.inventory import Network

    network = Network.model_validate(
        {
            "name": "vmnet",
            "subnet": subnet,
            "gateway": gateway,
            "managed": True,
            "addresses": {"first": first, "last": last},
        }
    )
    assert ansible.dhcp_range(network) == {"start": expected[0], "end": expected[1]}


def test_no_dhcp_range_without_reserved_addresses_or_room() -> None:
    from vmctl.core.inventory import Network

    bridged = Network.model_validate({"name": "br", "subnet": "10.0.0.0/24", "gateway": "10.0.0.1"})
    assert ansible.dhcp_range(bridged) is None
    full = Network.model_validate(
        {
            "name": "vmnet",
            "subnet": "10.0.0.0/30",
            "gateway": "10.0.0.1",
            "managed": True,
            "addresses": {"first": "10.0.0.2", "last": "10.0.0.2"},
        }
    )
    assert ansible.dhcp_range(full) is None
