"""`vmctl images import|list` on the real lab (node1 on local disks, node2 and node3 on the Ceph
pool `vms`), under an image name of this test's own added to a copy of the lab's inventory:
a file on node1 and NAME@base in the pool, "already there" the second time, a wrong --sha256
and a base image with a clone refused with nothing changed. Everything it made is removed."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import LAB, run_vmctl

pytestmark = pytest.mark.integration

BASE_DIR = "/var/lib/libvirt/images/base"


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """`lab/lab env` (the lab must be up already: this test never starts it)."""
    proc = subprocess.run([str(LAB), "env"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"no lab: {proc.stderr.strip()}")
    env = dict(os.environ)
    for line in proc.stdout.splitlines():
        key, value = line.removeprefix("export ").split("=", 1)
        env[key] = value.strip("'")
    if not Path(env["VMCTL_INVENTORY"]).exists():
        pytest.skip("the lab is not up")
    return env


def ssh(env: dict[str, str], host: str, command: str) -> subprocess.CompletedProcess[str]:
    options = ["-i", env["LAB_SSH_KEY"], "-o", f"UserKnownHostsFile={env['LAB_KNOWN_HOSTS']}"]
    return subprocess.run(
        ["ssh", *options, "-o", "BatchMode=yes", f"root@{host}", command],
        capture_output=True,
        text=True,
        timeout=60,
    )


def rbd(env: dict[str, str], *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rbd", "-c", env["CEPH_CONF"], *args], capture_output=True, text=True, check=check
    )


def qcow2(path: Path, pattern: int) -> str:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "4M"], check=True)
    subprocess.run(
        ["qemu-io", "-c", f"write -P {pattern} 0 1M", str(path)], check=True, capture_output=True
    )
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def image(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """An image name of this test's own in a copy of the lab's inventory; removed at the end
    from node1, the pool and PostgreSQL."""
    name = f"t-img-{secrets.token_hex(3)}"
    inv = yaml.safe_load(Path(env["VMCTL_INVENTORY"]).read_text())
    inv["images"][name] = {"path": f"{BASE_DIR}/{name}.qcow2", "default_user": "debian"}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inv))
    node1 = next(n for n in inv["nodes"] if n["storage"]["type"] == "dir")
    child = f"t-child-{name.removeprefix('t-img-')}"
    made = {"name": name, "inventory": str(path), "node1": node1["ssh"]["host"], "child": child}
    try:
        yield made
    finally:
        rbd(env, "rm", "--no-progress", f"vms/{child}")
        listed = rbd(env, "ls", "vms").stdout.split()
        for img in [i for i in listed if i == name or i.startswith(f"{name}.vmctl-")]:
            rbd(env, "snap", "purge", "--no-progress", f"vms/{img}")
            rbd(env, "rm", "--no-progress", f"vms/{img}")
        ssh(env, made["node1"], f"rm -f {BASE_DIR}/{name}.qcow2 {BASE_DIR}/.{name}.qcow2.vmctl-*")
        from vmctl.adapters.store import PgStore

        with PgStore(env["VMCTL_DATABASE_URL"]) as store:
            for record in store.image_records():
                if record.name == name:
                    store.forget_image(name, record.location)


def vmctl(env: dict[str, str], image: dict[str, Any], *args: str) -> Any:
    return run_vmctl(env, "--inventory", image["inventory"], "images", *args)


def file_sum(env: dict[str, str], image: dict[str, Any]) -> str:
    out = ssh(env, image["node1"], f"sha256sum {BASE_DIR}/{image['name']}.qcow2").stdout
    return out.split()[0] if out else ""


def pool_sum(env: dict[str, str], image: dict[str, Any]) -> str:
    return rbd(env, "image-meta", "get", f"vms/{image['name']}", "vmctl.sha256").stdout.strip()


def test_import_list_reimport_and_refusals(
    env: dict[str, str], image: dict[str, Any], tmp_path: Path
) -> None:
    name = image["name"]
    first, second = tmp_path / "first.qcow2", tmp_path / "second.qcow2"
    digest, other = qcow2(first, 0x5A), qcow2(second, 0x33)

    proc = vmctl(env, image, "import", name, str(first), "-o", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["location"], r["result"], r["sha256"]) for r in rows] == [
        ("node1", "installed", digest),
        ("vms@10.213.0.1:6789", "installed", digest),
    ]
    assert file_sum(env, image) == digest  # a file on node1 (dir storage)
    snaps = rbd(env, "snap", "ls", f"vms/{name}", check=True).stdout
    assert " base " in snaps  # NAME@base in the pool, what clones are made from
    assert pool_sum(env, image) == digest
    leftovers = [i for i in rbd(env, "ls", "vms").stdout.split() if i.startswith(f"{name}.")]
    assert leftovers == []

    proc = vmctl(env, image, "import", name, str(first), "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert [r["result"] for r in json.loads(proc.stdout)] == ["already there"] * 2

    proc = vmctl(env, image, "import", name, str(second), "--sha256", digest)  # not its sum
    assert proc.returncode == 2
    assert f"has sha256 {other}, not {digest}: nothing was uploaded" in proc.stderr
    assert (file_sum(env, image), pool_sum(env, image)) == (digest, digest)

    rbd(env, "clone", f"vms/{name}@base", f"vms/{image['child']}", check=True)
    proc = vmctl(env, image, "import", name, str(second))
    assert proc.returncode == 2, proc.stderr
    assert (
        f"image {name} is in use, not overwritten: rbd pool vms (nodes node2, node3) by "
        f"vms/{image['child']}"
    ) in proc.stderr
    assert (file_sum(env, image), pool_sum(env, image)) == (digest, digest)  # nothing anywhere

    proc = vmctl(env, image, "list", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    mine = {r["location"]: r for r in json.loads(proc.stdout) if r["image"] == name}
    assert mine["node1"]["present"] is True and mine["node1"]["used_by"] == []
    pool = mine["vms@10.213.0.1:6789"]
    assert (pool["present"], pool["sha256"]) == (True, digest)
    assert pool["used_by"] == [f"vms/{image['child']}"]

    rbd(env, "rm", "--no-progress", f"vms/{image['child']}", check=True)  # no clone: replaced
    proc = vmctl(env, image, "import", name, str(second), "--node", "node3", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert [r["result"] for r in json.loads(proc.stdout)] == ["installed"]
    assert (file_sum(env, image), pool_sum(env, image)) == (digest, other)
