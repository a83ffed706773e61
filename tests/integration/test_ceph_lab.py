"""The lab's throwaway Ceph cluster: healthy, pool `vms` of size 1, cephx on, every node a client
(conf + client.libvirt keyring in its /etc/ceph, libvirt secret with the recorded UUID)."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def admin(lab: dict, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[type-arg]
    c = lab["ceph"]
    return subprocess.run(
        ["ceph", "-c", c["conf"], "-n", "client.admin", "--keyring", c["admin_keyring"], *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def node_runners(lab: dict) -> dict[str, object]:  # type: ignore[type-arg]
    import guests

    return {node["name"]: guests.hypervisor(node, lab).runner for node in lab["nodes"]}


def test_status_describes_a_healthy_cluster_on_the_bridge(lab: dict) -> None:  # type: ignore[type-arg]
    c = lab["ceph"]
    assert c["up"] is True and c["health"] == "HEALTH_OK", c
    assert c["pool"] == "vms" and c["pool_size"] == 1
    assert c["monitor"] == f"{lab['bridge']['address']}:6789"
    assert c["osds"]["up"] == c["osds"]["total"] >= 1
    assert c["require_min_compat_client"] == "mimic"
    assert all(pid for pid in c["pids"].values())
    assert Path(c["conf"]).parent == Path(c["dir"])


def test_health_ok_with_the_admin_keyring(lab: dict) -> None:  # type: ignore[type-arg]
    proc = admin(lab, "health")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "HEALTH_OK"


def test_pool_vms_has_size_one_and_is_an_rbd_pool(lab: dict) -> None:  # type: ignore[type-arg]
    pools = json.loads(admin(lab, "osd", "pool", "ls", "detail", "-f", "json").stdout)
    vms = next(p for p in pools if p["pool_name"] == "vms")
    assert vms["size"] == 1
    assert "rbd" in vms["application_metadata"]


def test_each_node_lists_the_pool_as_client_libvirt(lab: dict) -> None:  # type: ignore[type-arg]
    image = f"t-ceph-{secrets.token_hex(3)}"
    c = lab["ceph"]
    rbd = ["rbd", "-c", c["conf"], "-n", "client.admin", "--keyring", c["admin_keyring"]]
    subprocess.run([*rbd, "create", f"vms/{image}", "--size", "4M"], check=True, timeout=60)
    try:
        for name, runner in node_runners(lab).items():
            res = runner.run(["rbd", "-n", "client.libvirt", "ls", "vms"], check=False)  # type: ignore[attr-defined]
            assert res.exit_status == 0, (name, res.stderr)
            assert image in res.stdout.split(), name
            # the node holds the client's key only, never the admin's
            files = runner.run(["ls", "/etc/ceph"]).stdout.split()  # type: ignore[attr-defined]
            assert "ceph.client.libvirt.keyring" in files and "ceph.conf" in files, files
            assert not any("admin" in f for f in files), files
    finally:
        subprocess.run([*rbd, "rm", "--no-progress", f"vms/{image}"], check=True, timeout=60)


def test_each_node_holds_the_libvirt_secret(lab: dict) -> None:  # type: ignore[type-arg]
    uuid = lab["ceph"]["libvirt_secret_uuid"]
    key = subprocess.run(
        [
            "ceph-authtool",
            "-p",
            "-n",
            "client.libvirt",
            f"{lab['ceph']['dir']}/ceph.client.libvirt.keyring",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for name, runner in node_runners(lab).items():
        listed = runner.run(["virsh", "-q", "secret-list"]).stdout  # type: ignore[attr-defined]
        line = next((ln for ln in listed.splitlines() if uuid in ln), "")
        assert "ceph client.libvirt secret" in line, (name, listed)
        value = runner.run(["virsh", "secret-get-value", uuid]).stdout.strip()  # type: ignore[attr-defined]
        assert value == key, name


def test_cephx_refuses_a_client_without_the_key(lab: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    c = lab["ceph"]
    wrong = tmp_path / "wrong.keyring"
    key = subprocess.run(
        ["ceph-authtool", "--gen-print-key"], capture_output=True, text=True, check=True
    ).stdout.strip()
    wrong.write_text(f"[client.libvirt]\n\tkey = {key}\n")
    base = ["ceph", "-c", c["conf"], "--connect-timeout", "10", "-n", "client.libvirt"]
    for extra in (["--keyring", str(wrong)], ["--auth-client-required", "none"]):
        proc = subprocess.run(
            [*base, *extra, "osd", "pool", "ls"], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode != 0, (extra, proc.stdout)
        assert "vms" not in proc.stdout
    # the same command with the right key works
    right = subprocess.run([*base, "osd", "pool", "ls"], capture_output=True, text=True, timeout=60)
    assert right.returncode == 0 and "vms" in right.stdout.split(), right.stderr
