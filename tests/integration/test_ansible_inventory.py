"""Ansible itself reads vmctl's inventory through deploy/ansible/inventory/vmctl.sh (its script
inventory plugin, as `ansible-playbook -i` will): the hosts, their variables and the groups. No lab
needed, but Ansible (Debian's ansible, installed by lab/setup-host.sh)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_ansible_inventory import SMALL

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "ansible" / "inventory" / "vmctl.sh"


def ansible_inventory(
    inventory: Path, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("ansible-inventory")
    if binary is None:
        pytest.fail("ansible-inventory is missing: run lab/setup-host.sh (it installs ansible)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VMCTL_", "ANSIBLE_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        VMCTL_CONFIG=str(tmp_path / "none.toml"),
        VMCTL_INVENTORY=str(inventory),
        HOME=str(tmp_path),  # Ansible's local temporary files
        ANSIBLE_CONFIG=str(tmp_path / "none.cfg"),
        # only the script plugin, and a source it cannot parse is an error, never a warning
        ANSIBLE_INVENTORY_ENABLED="script",
        ANSIBLE_INVENTORY_UNPARSED_FAILED="true",
    )
    return subprocess.run(
        [binary, "-i", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return path


def test_ansible_lists_the_hosts_and_their_vars(inventory: Path, tmp_path: Path) -> None:
    proc = ansible_inventory(inventory, tmp_path, "--list")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    hostvars = data["_meta"]["hostvars"]
    assert sorted(hostvars) == ["kvm1", "kvm2", "kvm3", "mgr1"]
    kvm2 = hostvars["kvm2"]
    assert (kvm2["ansible_host"], kvm2["ansible_port"], kvm2["ansible_user"]) == (
        "10.0.0.2",
        22,
        "root",
    )
    assert kvm2["vmctl_node"]["storage"]["keyring"] == "/etc/ceph/ceph.client.libvirt.keyring"
    assert kvm2["vmctl_node"]["network"]["subnet"] == "10.20.2.0/24"
    assert kvm2["vmctl_inventory_file"] == str(inventory)  # a var of group all, on every host
    assert hostvars["kvm1"]["ansible_port"] == 2222
    assert {"vmctl_node", "vmctl_manager"} <= set(hostvars["kvm1"])
    assert hostvars["mgr1"]["vmctl_manager"]["monitoring"]["api"] == ["10.0.0.5:8080"]
    assert data["vmctl_rbd_nodes"]["hosts"] == ["kvm2", "kvm3"]
    assert data["vmctl_dir_nodes"]["hosts"] == ["kvm1"]
    assert sorted(data["vmctl_managers"]["hosts"]) == ["kvm1", "mgr1"]


def test_ansible_reads_one_host(inventory: Path, tmp_path: Path) -> None:
    proc = ansible_inventory(inventory, tmp_path, "--host", "kvm3")
    assert proc.returncode == 0, proc.stderr
    host = json.loads(proc.stdout)
    assert host["vmctl_node"]["storage"]["keyring"] == "/etc/ceph/vmctl.keyring"
    assert host["vmctl_node"]["virt_type"] == "qemu"


def test_ansible_graph_shows_the_groups(inventory: Path, tmp_path: Path) -> None:
    proc = ansible_inventory(inventory, tmp_path, "--graph")
    assert proc.returncode == 0, proc.stderr
    groups: dict[str, list[str]] = {}
    current = ""
    for line in proc.stdout.splitlines():
        item = line.rsplit("|--", 1)[-1].strip()  # "  |  |--kvm1"
        if item.startswith("@"):
            current = item.removeprefix("@").removesuffix(":")
            groups[current] = []
        elif item:
            groups[current].append(item)
    assert groups["vmctl_nodes"] == ["kvm1", "kvm2", "kvm3"]
    assert groups["vmctl_dir_nodes"] == ["kvm1"]
    assert groups["vmctl_rbd_nodes"] == ["kvm2", "kvm3"]
    assert sorted(groups["vmctl_managers"]) == ["kvm1", "mgr1"]


def test_ansible_stops_on_a_broken_inventory_with_vmctls_message(
    inventory: Path, tmp_path: Path
) -> None:
    inventory.write_text(inventory.read_text().replace("virt_type: qemu", "virt_type: xen", 1))
    proc = ansible_inventory(inventory, tmp_path, "--list")
    assert proc.returncode != 0
    assert "virt_type" in proc.stderr
    assert "vmctl: error:" in proc.stderr
