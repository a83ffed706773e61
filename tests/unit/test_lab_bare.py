"""What `lab/lab warm-bare` fetches into the bare hosts' proxy: every package deploy/ansible's roles
install, read from the roles themselves (so a package added to a role is fetched too)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from labkit import bare

pytestmark = pytest.mark.unit


def test_role_packages_are_every_package_the_roles_install() -> None:
    packages = bare.role_packages()
    for role, key in [
        ("vmctl_node", "vmctl_node_packages"),
        ("vmctl_manager", "vmctl_manager_packages"),
        ("ceph_client", "ceph_client_packages"),
    ]:
        defaults = yaml.safe_load((bare.ROLES / role / "defaults" / "main.yml").read_text())
        assert set(defaults[key]) <= set(packages), role
    # named in the tasks themselves
    assert {"prometheus-node-exporter", "prometheus-libvirt-exporter"} <= set(packages)
    assert packages == sorted(set(packages))
    assert not [p for p in packages if "{{" in p or " " in p]


def test_a_package_added_to_a_role_task_is_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = tmp_path / "extra" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text(
        "- name: Install it\n  ansible.builtin.apt:\n    name: socat\n    state: present\n"
        "- name: Not apt\n  ansible.builtin.file:\n    path: /x\n    state: directory\n"
    )
    monkeypatch.setattr(bare, "ROLES", tmp_path)
    assert bare.role_packages() == ["socat"]
