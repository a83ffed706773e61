"""RBD on the lab's real Ceph without booting a guest: a create whose clone step fails is rolled
back (no image, no clone child, no directory, no reservation, no row); `vmctl reconcile` finds an
image named as vmctl names VM disks, marked as ours, with no row, and `--fix` removes it; one
without our mark is reported as foreign and left alone. Names: `rbd-it-*`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import leftovers, rbd, rbd_images, run_vmctl

pytestmark = pytest.mark.integration


@pytest.fixture()
def rbd_lab(lab: dict) -> dict:  # type: ignore[type-arg]
    if [n["storage"] for n in lab["nodes"][1:2]] != ["rbd"]:
        pytest.skip("the lab's node2 does not keep VM disks in Ceph")
    return lab


def _ceph(*args: str) -> str:
    from labkit import ceph

    argv = ["ceph", "-c", str(ceph.CONF), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.fixture()
def read_only_client(rbd_lab: dict) -> Iterator[None]:  # type: ignore[type-arg]
    """client.libvirt may read the pool but not write: `rbd clone` fails (EPERM)."""
    from labkit import ceph

    _ceph("auth", "caps", ceph.CLIENT, "mon", "profile rbd", "osd", "profile rbd-read-only")
    try:
        yield
    finally:
        _ceph("auth", "caps", ceph.CLIENT, *ceph.CLIENT_CAPS)


def test_a_clone_that_fails_is_rolled_back(
    rbd_lab: dict,  # type: ignore[type-arg]
    vmctl_env: dict[str, str],
    read_only_client: None,
) -> None:
    name = "rbd-it-clone"
    proc = run_vmctl(vmctl_env, "create", name, "--node", "node2", "--disk", "1", timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "rbd clone" in proc.stderr or "clone" in proc.stderr, proc.stderr
    assert "removing what was made" in proc.stderr
    assert leftovers(rbd_lab, vmctl_env, [name]) == {}
    assert not [i for _, i in rbd_images() if i.startswith(f"vmctl.{name}.")]
    assert f"vms/vmctl.{name}.root" not in rbd("children", "vms/debian-12@base")
    events = json.loads(run_vmctl(vmctl_env, "events", name, "-o", "json").stdout)
    assert [(e["action"], e["result"]) for e in events][-1] == ("create", "failed")


def test_reconcile_finds_an_image_without_a_row_and_fix_removes_only_ours(
    rbd_lab: dict,  # type: ignore[type-arg]
    vmctl_env: dict[str, str],
) -> None:
    from vmctl.adapters.store import PgStore

    with PgStore(vmctl_env["VMCTL_DATABASE_URL"]) as store:
        installation = store.installation_id()
    ours, foreign = "vms/vmctl.rbd-it-orphan.data", "vms/vmctl.rbd-it-foreign.data"
    try:
        for image in (ours, foreign):
            rbd("create", "--size", "16M", image)
        rbd("image-meta", "set", ours, "vmctl.mark", f"installation={installation} id=999999")
        rbd("snap", "create", f"{ours}@hand-made")
        report = run_vmctl(vmctl_env, "reconcile", "--node", "node2", "-o", "json")
        assert report.returncode in (0, 4), report.stderr
        out = json.loads(report.stdout)
        found = [d for d in out["drift"] if "rbd-it-" in d["subject"]]
        assert [(d["kind"], d["subject"], d["vm"]) for d in found] == [
            ("orphan-image", "image vmctl.rbd-it-orphan.data", "rbd-it-orphan")
        ]
        assert "hand-made" in found[0]["detail"]
        foreign_subjects = [d["subject"] for d in out["foreign"]]
        assert "image vmctl.rbd-it-foreign.data" in foreign_subjects
        fixed = run_vmctl(vmctl_env, "reconcile", "--fix", "--node", "node2", "-o", "json")
        left = [d for d in json.loads(fixed.stdout)["drift"] if "rbd-it-" in d["subject"]]
        assert left == [], fixed.stderr
        images = [i for _, i in rbd_images()]
        assert "vmctl.rbd-it-orphan.data" not in images
        assert "vmctl.rbd-it-foreign.data" in images  # not ours: left alone
    finally:
        for image in (ours, foreign):
            subprocess.run(["rbd", "-c", _conf(), "snap", "purge", image], capture_output=True)
            subprocess.run(["rbd", "-c", _conf(), "rm", image], capture_output=True)


def _conf() -> str:
    from labkit import ceph

    return str(ceph.CONF)
