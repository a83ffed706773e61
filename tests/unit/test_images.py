"""Base images: the plan and parsers of vmctl.core.images, scripts/image.sh's file subcommands
run locally (real qemu-img on real qcow2 files), and ImageService over fakes (refusals before
anything is sent, checksums, records, events, nodes that do not answer)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.unit.fakes import NOW, FakeStore
from vmctl.core import images as core
from vmctl.core.errors import (
    ChecksumMismatch,
    ImageInUse,
    InvalidInput,
    NodeUnreachable,
    NotFound,
)
from vmctl.core.inventory import Inventory
from vmctl.core.records import VmRecord
from vmctl.services.images import ImageService
from vmctl.services.ports import Result

pytestmark = pytest.mark.unit

SCRIPT = REPO / "scripts" / "image.sh"
RBD = {
    "type": "rbd",
    "pool": "vms",
    "monitors": ["10.0.0.1:6789"],
    "user": "libvirt",
    "secret_uuid": "3c1b9a52-6f0e-4c55-9a8e-7a6c2f1d0b11",
}


def _node(name: str, storage: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "ssh": {"host": "127.0.0.1"},
        "capacity": {"cpu": 8, "ram_mb": 8192, "disk_gb": 100},
        "storage": storage,
        "network": {"name": "vmnet", "subnet": "10.9.1.0/24", "gateway": "10.9.1.1"},
    }


INVENTORY = Inventory.model_validate(
    {
        "defaults": {"image": "debian-12", "ram_mb": 512, "cpu": 1, "disk_gb": 2},
        "images": {"debian-12": {"path": "/srv/base/debian-12.qcow2", "default_user": "debian"}},
        "nodes": [
            _node("kvm1", {"type": "dir", "path": "/srv/vms"}),
            _node("kvm2", RBD),
            _node("kvm3", RBD),
        ],
    }
)
POOL = "vms@10.0.0.1:6789"
QCOW2 = core.QCOW2_MAGIC + b"\x00\x00\x00\x03" + b"x" * 1000
SUM = hashlib.sha256(QCOW2).hexdigest()


# -- pure ---------------------------------------------------------------------------------------


def test_locations_are_each_dir_node_and_each_pool_once() -> None:
    locs = core.locations(INVENTORY)
    assert [(loc.key, loc.kind, loc.node_names) for loc in locs] == [
        ("kvm1", "dir", ["kvm1"]),
        (POOL, "rbd", ["kvm2", "kvm3"]),
    ]
    image = INVENTORY.image("debian-12")
    assert locs[0].describe(image) == "node kvm1 /srv/base/debian-12.qcow2"
    assert locs[1].describe(image) == "rbd pool vms (nodes kvm2, kvm3)"


def test_plan_of_one_node_is_its_location_with_that_node_first() -> None:
    assert core.plan(INVENTORY) == core.locations(INVENTORY)
    (loc,) = core.plan(INVENTORY, "kvm3")
    assert (loc.key, loc.node_names) == (POOL, ["kvm3", "kvm2"])
    assert loc.describe() == "rbd pool vms (nodes kvm2, kvm3)"
    assert [loc.key for loc in core.plan(INVENTORY, "kvm1")] == ["kvm1"]
    with pytest.raises(NotFound, match="unknown node 'kvm9'"):
        core.plan(INVENTORY, "kvm9")


def test_sha256_and_format() -> None:
    assert core.check_sha256(f" {SUM.upper()} ") == SUM
    for bad in ("", "abc", SUM[:-1], SUM + "0", "g" * 64):
        with pytest.raises(InvalidInput, match="sha256"):
            core.check_sha256(bad)
    assert core.file_format(QCOW2[:4]) == "qcow2"
    assert core.file_format(b"\x00" * 4) == "raw"


def test_upload_paths_sit_beside_the_file_or_under_the_storage_dir() -> None:
    dir_loc, pool = core.locations(INVENTORY)
    image = INVENTORY.image("debian-12")
    kvm1, kvm2 = dir_loc.nodes[0], pool.nodes[0]
    assert (
        core.upload_path(dir_loc, kvm1, "debian-12", image, "0a1b2c3d")
        == "/srv/base/.debian-12.qcow2.vmctl-upload-0a1b2c3d"
    )
    assert (
        core.upload_path(pool, kvm2, "debian-12", image, "0a1b2c3d")
        == "/var/lib/libvirt/images/vmctl/.images/debian-12.vmctl-upload-0a1b2c3d"
    )
    with pytest.raises(ValueError):
        core.upload_path(pool, kvm2, "debian-12", image, "../x")


def test_commands_carry_the_pool_options_only_for_rbd() -> None:
    dir_loc, pool = core.locations(INVENTORY)
    images = {"debian-12": INVENTORY.image("debian-12")}
    argv = core.status_command(dir_loc, dir_loc.nodes[0], images, with_sum=True)
    assert argv[:2] == ["bash", "-c"] and argv[3:] == [
        "image.sh",
        "file-status",
        "/srv/vms",
        "yes",
        "/srv/base/debian-12.qcow2",
    ]
    argv = core.install_command(
        pool, pool.nodes[0], "debian-12", images["debian-12"], "/u", SUM, "raw"
    )
    assert argv[3:] == [
        "image.sh",
        "--rbd-pool",
        "vms",
        "--rbd-user",
        "libvirt",
        "--rbd-mons",
        "10.0.0.1:6789",
        "--rbd-keyring",
        "/etc/ceph/ceph.client.libvirt.keyring",
        "rbd-install",
        "debian-12",
        "/u",
        SUM,
        "raw",
    ]


def test_parse_status() -> None:
    out = (
        f"== debian-12\npresent=1\nsize=2147483648\nsha256={SUM}\n"
        "user=vms/vmctl.web-1.root\nuser=vms/hand-made\n"
        "== other\npresent=0\n== unknown\npresent=1\n"
    )
    found = core.parse_status(out, {"debian-12": "debian-12", "other": "other"})
    assert found == {
        "debian-12": core.ImageStatus(True, 2147483648, SUM, ("vms/hand-made", "web-1")),
        "other": core.ImageStatus(False),
    }
    assert core.users("result=x\nuser=web-2\nuser=vms/vmctl.db.root\n") == ["web-2", "db"]


def test_script_exit_codes_match_the_core() -> None:
    header = SCRIPT.read_text()
    for name, value in (("IN_USE", core.IN_USE), ("BAD_SUM", core.BAD_SUM)):
        assert f"\n{name}={value}\n" in header
    assert f"\nBAD_IMAGE={core.BAD_IMAGE}\n" in header


# -- scripts/image.sh, run here -----------------------------------------------------------------


def image_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "args",
    [
        ("file-install", "/srv", "/srv/b.qcow2", "/tmp/x.vmctl-upload-0a1b2c3d", SUM),  # not beside
        ("file-install", "/srv", "/srv/../b", "/srv/.b.vmctl-upload-0a1b2c3d", SUM),
        ("file-install", "/srv", "/srv/b", "/srv/.b.vmctl-upload-0a1b2c3d", "abc"),
        ("file-status", "relative", "no", "/srv/b"),
        ("file-status", "/srv", "no", "/srv/$(id)"),
        ("discard", "/etc/passwd"),
        ("rbd-status", "debian-12"),  # no RBD options
        ("--rbd-pool", "vms;x", "rbd-status", "a"),
        ("nonsense",),
    ],
)
def test_script_refuses_bad_arguments(args: tuple[str, ...]) -> None:
    proc = image_sh(*args)
    assert proc.returncode == 2, proc.stderr


qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def _qcow2(path: Path, backing: Path | None = None) -> str:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-F", "qcow2", "-b", str(backing)]
    subprocess.run([*argv, str(path), "1M"], check=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@qemu_img
def test_file_install_checks_the_sum_refuses_overlays_and_is_idempotent(tmp_path: Path) -> None:
    base, vms = tmp_path / "base", tmp_path / "vms"
    base.mkdir()
    vms.mkdir()
    target = base / "img.qcow2"
    upload = base / ".img.qcow2.vmctl-upload-0a1b2c3d"
    digest = _qcow2(upload)

    def install(sha: str = digest) -> subprocess.CompletedProcess[str]:
        return image_sh("file-install", str(vms), str(target), str(upload), sha)

    proc = install("0" * 64)  # what arrived is not what was sent: removed, nothing changed
    assert proc.returncode == core.BAD_SUM and not upload.exists() and not target.exists()
    _qcow2(upload)
    proc = install()
    assert (proc.returncode, proc.stdout) == (0, "result=installed\n"), proc.stderr
    assert target.exists() and not upload.exists()
    _qcow2(upload)
    assert install().stdout == "result=unchanged\n" and not upload.exists()

    (vms / "web-1").mkdir()
    _qcow2(vms / "web-1" / "root.qcow2", backing=target)
    status = image_sh("file-status", str(vms), "yes", str(target), str(base / "none.qcow2"))
    assert status.returncode == 0, status.stderr
    found = core.parse_status(status.stdout, {str(target): "img", str(base / "none.qcow2"): "no"})
    assert found["img"].users == ("web-1",) and found["img"].sha256 == digest
    assert found["no"] == core.ImageStatus(False)

    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(upload), "2M"], check=True)
    other = hashlib.sha256(upload.read_bytes()).hexdigest()
    proc = install(other)  # another image, while web-1's overlay uses it: refused
    assert proc.returncode == core.IN_USE and proc.stdout == "user=web-1\n"
    assert not upload.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == digest


@qemu_img
def test_file_install_refuses_an_image_with_a_backing_file(tmp_path: Path) -> None:
    other = tmp_path / "other.qcow2"
    _qcow2(other)
    upload = tmp_path / ".img.qcow2.vmctl-upload-0a1b2c3d"
    digest = _qcow2(upload, backing=other)
    proc = image_sh("file-install", str(tmp_path), str(tmp_path / "img.qcow2"), str(upload), digest)
    assert proc.returncode == core.BAD_IMAGE and "backing file" in proc.stderr
    assert not upload.exists()


# -- the service over fakes ---------------------------------------------------------------------


@dataclass
class FakeRunner:
    """A node: answers image.sh's subcommands from ``status`` (what it holds) and ``install``
    (the exit status and output of an install)."""

    node: str
    status: str = ""
    install: Result = field(default_factory=lambda: Result("result=installed\n", "", 0))
    down: bool = False
    ran: list[list[str]] = field(default_factory=list)
    puts: list[tuple[str, bytes]] = field(default_factory=list)

    def _sub(self, argv: Sequence[str]) -> list[str]:
        args = list(argv[4:])
        while args and args[0].startswith("--rbd-"):
            args = args[2:]
        return args

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None
    ) -> Result:
        if self.down:
            raise NodeUnreachable(f"node {self.node} (127.0.0.1:22): Connection refused")
        args = self._sub(argv)
        self.ran.append(args)
        if args[0] in ("file-status", "rbd-status"):
            return Result(self.status, "", 0)
        if args[0] in ("file-install", "rbd-install"):
            return self.install
        return Result("", "", 0)

    def put(self, data: bytes, remote_path: str, mode: int = 0o600) -> None:
        self.puts.append((remote_path, data))

    def stream(self, argv: Sequence[str], on_line: Callable[[str], None], stop: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass
class Images:
    svc: ImageService
    store: FakeStore
    runners: dict[str, FakeRunner]
    file: Path


@pytest.fixture
def images(tmp_path: Path) -> Images:
    store = FakeStore()
    runners = {n: FakeRunner(n, status="== x\n") for n in ("kvm1", "kvm2", "kvm3")}
    runners["kvm1"].status = "== /srv/base/debian-12.qcow2\npresent=0\n"
    runners["kvm2"].status = runners["kvm3"].status = "== debian-12\npresent=0\n"
    file = tmp_path / "debian-12.qcow2"
    file.write_bytes(QCOW2)
    svc = ImageService(
        inventory=INVENTORY,
        store=store,
        runner_for=lambda node: runners[node.name],
        actor="test@test",
    )
    return Images(svc, store, runners, file)


def _vm(name: str, node: str, image: str = "debian-12") -> VmRecord:
    return VmRecord(
        id=1, name=name, node=node, state="running", ram_mb=512, cpu=1, disk_gb=1, root_gb=4,
        image=image, mac="52:54:00:00:00:01", host_key=None, ip=None, ip_state=None,
        group_name=None, project=None, created_at=NOW, updated_at=NOW,
    )  # fmt: skip


def test_import_sends_to_each_dir_node_and_once_to_the_pool(images: Images) -> None:
    outcome = images.svc.import_image("debian-12", images.file)
    assert [(r["location"], r["result"]) for r in outcome.rows] == [
        ("kvm1", "installed"),
        (POOL, "installed"),
    ]
    assert not outcome.unreachable
    ((path1, data1),) = images.runners["kvm1"].puts
    ((path2, data2),) = images.runners["kvm2"].puts
    assert data1 == data2 == QCOW2 and not images.runners["kvm3"].puts
    assert re.fullmatch(r"/srv/base/\.debian-12\.qcow2\.vmctl-upload-[0-9a-f]{8}", path1)
    assert images.runners["kvm2"].ran[-1] == ["rbd-install", "debian-12", path2, SUM, "qcow2"]
    assert sorted(images.store.images) == [("debian-12", "kvm1"), ("debian-12", POOL)]
    assert [(e[1], e[2], e[3]) for e in images.store.logged] == [
        ("kvm1", "image-import", "ok"),
        ("kvm2", "image-import", "ok"),
    ]


def test_a_wrong_sha256_is_refused_before_any_node_is_asked(images: Images) -> None:
    with pytest.raises(InvalidInput, match=f"has sha256 {SUM}, not 0+: nothing was uploaded"):
        images.svc.import_image("debian-12", images.file, sha256="0" * 64)
    assert all(not r.ran and not r.puts for r in images.runners.values())
    images.svc.import_image("debian-12", images.file, sha256=SUM.upper())  # the right one


def test_unknown_image_node_or_file(images: Images, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="unknown image 'nope'"):
        images.svc.import_image("nope", images.file)
    with pytest.raises(NotFound, match="unknown node 'kvm9'"):
        images.svc.import_image("debian-12", images.file, node="kvm9")
    with pytest.raises(InvalidInput, match="cannot read"):
        images.svc.import_image("debian-12", tmp_path / "missing.qcow2")
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 4096)
    with pytest.raises(InvalidInput, match="not a qcow2 image"):
        images.svc.import_image("debian-12", raw)  # dir nodes need qcow2
    outcome = images.svc.import_image("debian-12", raw, node="kvm2")  # a pool takes raw
    assert images.runners["kvm2"].ran[-1][-1] == "raw" and outcome.rows[0]["result"] == "installed"


def test_clones_in_the_pool_refuse_the_import_before_anything_is_sent(images: Images) -> None:
    images.runners["kvm2"].status = (
        "== debian-12\npresent=1\nsha256=" + "1" * 64 + "\nuser=vms/vmctl.web-1.root\n"
    )
    with pytest.raises(ImageInUse) as err:
        images.svc.import_image("debian-12", images.file)
    assert str(err.value) == (
        "image debian-12 is in use, not overwritten: rbd pool vms (nodes kvm2, kvm3) by web-1 "
        "(delete those VMs first, or import under another name)"
    )
    assert err.value.exit_status == 2
    assert all(not r.puts for r in images.runners.values())  # not even kvm1's file
    assert not images.store.images


def test_recorded_vms_refuse_the_import_too(images: Images) -> None:
    images.store.vms["db-1"] = _vm("db-1", "kvm1")
    images.store.vms["other"] = _vm("other", "kvm1", image="ubuntu")
    with pytest.raises(ImageInUse, match=r"node kvm1 /srv/base/debian-12.qcow2 by db-1 \("):
        images.svc.import_image("debian-12", images.file)
    outcome = images.svc.import_image("debian-12", images.file, node="kvm2")  # the pool is free
    assert [r["result"] for r in outcome.rows] == ["installed"]


def test_the_same_bytes_are_left_alone(images: Images) -> None:
    images.runners["kvm1"].status = f"== /srv/base/debian-12.qcow2\npresent=1\nsha256={SUM}\n"
    images.runners["kvm2"].status = f"== debian-12\npresent=1\nsha256={SUM}\nuser=web-1\n"
    outcome = images.svc.import_image("debian-12", images.file)
    assert [r["result"] for r in outcome.rows] == ["already there", "already there"]
    assert all(not r.puts for r in images.runners.values())
    assert len(images.store.images) == 2  # recorded, as they were not
    images.store.logged.clear()
    images.svc.import_image("debian-12", images.file)
    assert not images.store.logged  # already recorded: nothing new


def test_a_bad_sum_on_the_node_fails_and_is_logged(images: Images) -> None:
    images.runners["kvm1"].install = Result(
        "", "image.sh: the upload's sha256 is 00, not 11 (removed)\n", core.BAD_SUM
    )
    with pytest.raises(ChecksumMismatch, match="what node kvm1 received is not what was sent"):
        images.svc.import_image("debian-12", images.file)
    assert not images.store.images
    (event,) = images.store.logged
    assert event[3] == "failed" and "sha256" in event[4]["cause"]


def test_the_node_refuses_an_image_that_came_into_use(images: Images) -> None:
    images.runners["kvm2"].install = Result("user=vms/vmctl.new-1.root\n", "in use", core.IN_USE)
    with pytest.raises(ImageInUse, match=r"rbd pool vms .* by new-1"):
        images.svc.import_image("debian-12", images.file)
    assert list(images.store.images) == [("debian-12", "kvm1")]  # kvm1's went in before


def test_a_node_that_does_not_answer_is_reported_and_the_rest_goes_on(images: Images) -> None:
    images.runners["kvm1"].down = True
    images.runners["kvm2"].down = True  # the pool is reached through kvm3
    outcome = images.svc.import_image("debian-12", images.file)
    assert [(r["location"], r["result"]) for r in outcome.rows] == [
        ("kvm1", "unreachable"),
        (POOL, "installed"),
    ]
    assert sorted(outcome.unreachable) == ["kvm1", "kvm2"]
    assert images.runners["kvm3"].puts


def test_list_shows_presence_records_and_users(images: Images) -> None:
    images.store.record_image("debian-12", POOL, SUM, 1024)
    images.store.record_image("gone", "kvm1", SUM, 1)
    images.store.vms["db-1"] = _vm("db-1", "kvm3")
    images.runners[
        "kvm2"
    ].status = "== debian-12\npresent=1\nsize=1024\nuser=vms/vmctl.web-1.root\n"
    images.runners["kvm1"].down = True
    outcome = images.svc.list_images()
    rows = {(r["image"], r["location"]): r for r in outcome.rows}
    assert rows[("debian-12", "kvm1")]["present"] is None
    pool = rows[("debian-12", POOL)]
    assert (pool["present"], pool["sha256"], pool["used_by"]) == (True, SUM, ["db-1", "web-1"])
    assert pool["imported_at"] == NOW
    assert rows[("gone", "kvm1")]["where"] == "kvm1 (not in the inventory)"
    assert list(outcome.unreachable) == ["kvm1"]
