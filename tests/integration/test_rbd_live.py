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


def _md5(image: str) -> str:
    from labkit import ceph

    export = subprocess.run(
        ["rbd", "-c", str(ceph.CONF), "export", "--no-progress", image, "-"],
        capture_output=True,
        check=True,
        timeout=120,
    )
    import hashlib

    return hashlib.md5(export.stdout).hexdigest()


def test_rbd_snapshots_revert_and_grow_through_the_storage_adapter(
    rbd_lab: dict,  # type: ignore[type-arg]
) -> None:
    """The RBD storage adapter on node2 (scripts/rbd.sh over SSH) on images made by hand:
    snapshot root and data together, refuse a duplicate, revert both (the bytes come back),
    refuse a revert to a snapshot one lacks (nothing changed), delete, grow, refuse to shrink."""
    import guests

    from vmctl.core.errors import Conflict, NotFound, RemoteCommandFailed

    vm = "rbd-it-snap"
    images = [f"vms/vmctl.{vm}.root", f"vms/vmctl.{vm}.data"]
    node = next(n for n in rbd_lab["nodes"] if n["name"] == "node2")
    hv = guests.hypervisor(node, rbd_lab, storage="inventory")
    try:
        for image in images:
            rbd("create", "--size", "8M", image)
        before = [_md5(i) for i in images]
        assert hv.snapshot_create(vm, True, "s1", running=False) is False
        with pytest.raises(Conflict, match="already"):
            hv.snapshot_create(vm, True, "s1", running=False)
        assert hv.snapshots(vm) == {f"vmctl.{vm}.root": ["s1"], f"vmctl.{vm}.data": ["s1"]}
        for image in images:
            rbd("bench", "--io-type", "write", "--io-total", "2M", "--io-pattern", "rand", image)
        assert [_md5(i) for i in images] != before
        rbd("snap", "create", f"{images[0]}@only-root")
        with pytest.raises(NotFound, match="has no snapshot only-root"):
            hv.snapshot_revert(vm, True, "only-root")
        hv.snapshot_revert(vm, True, "s1")
        assert [_md5(i) for i in images] == before
        hv.snapshot_delete(vm, True, "s1", running=False)
        assert hv.snapshots(vm) == {f"vmctl.{vm}.root": ["only-root"], f"vmctl.{vm}.data": []}
        hv.grow_disk(vm, 2)
        assert json.loads(rbd("info", "--format", "json", images[1]))["size"] == 2 * 2**30
        with pytest.raises(RemoteCommandFailed, match="never shrink"):
            hv.grow_disk(vm, 1)
        assert json.loads(rbd("info", "--format", "json", images[1]))["size"] == 2 * 2**30
    finally:
        hv.close()
        for image in images:
            subprocess.run(["rbd", "-c", _conf(), "snap", "purge", image], capture_output=True)
            subprocess.run(["rbd", "-c", _conf(), "rm", image], capture_output=True)
