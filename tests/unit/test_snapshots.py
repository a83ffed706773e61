"""Snapshots: the pure builders and parsers of vmctl.core.snapshots, the node scripts run locally
(real qemu-img on real qcow2 files; a stand-in `virsh` that logs what it is asked), and the
service over in-memory fakes (lock, events, rollback, revert's power cycle)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.unit.fakes import NOW, FakeHypervisor, FakeStore, World, world
from vmctl.core import snapshots as snap
from vmctl.core.errors import (
    Busy,
    Conflict,
    InvalidInput,
    NotFound,
    RemoteCommandFailed,
    Unavailable,
    WrongState,
)
from vmctl.core.requests import CreateRequest

pytestmark = pytest.mark.unit

ROOT, DATA = "/srv/vms/web-1/root.qcow2", "/srv/vms/web-1/data.qcow2"

# What QEMU 7.2 under libvirt 9 answers to query-block (trimmed: the lab's, Debian 12).
QUERY_BLOCK = {
    "return": [
        {
            "device": "",
            "inserted": {
                "image": {
                    "filename": ROOT,
                    "backing-image": {"filename": "/srv/base/debian-12.qcow2"},
                },
                "node-name": "libvirt-3-format",
                "file": ROOT,
                "ro": False,
            },
            "qdev": "/machine/peripheral/virtio-disk0/virtio-backend",
        },
        {
            "device": "",
            "inserted": {
                "image": {"filename": DATA},
                "node-name": "libvirt-2-format",
                "file": DATA,
                "ro": False,
            },
            "qdev": "/machine/peripheral/virtio-disk1/virtio-backend",
        },
        {
            "device": "",
            "inserted": {
                "image": {"filename": "/srv/vms/web-1/seed.iso"},
                "node-name": "libvirt-1-format",
                "file": "/srv/vms/web-1/seed.iso",
                "ro": True,
            },
            "qdev": "/machine/peripheral/virtio-disk2/virtio-backend",
        },
    ],
    "id": "libvirt-414",
}

# `qemu-img snapshot -l` of a disk snapshotted running (QMP) and then stopped (qemu-img).
LISTING = """Snapshot list:
ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT
1         s1                    0 B 2026-12-02 07:55:29 00:03:15.793
2         before-upgrade        0 B 2026-12-02 07:59:18 00:00:00.000          0
"""


# -- pure functions ----------------------------------------------------------------------------


def test_disk_paths_are_root_then_data_never_the_seed() -> None:
    assert snap.disk_paths("/srv/vms", "web-1", data_disk=True) == [ROOT, DATA]
    assert snap.disk_paths("/srv/vms", "web-1", data_disk=False) == [ROOT]


def test_qmp_commands_are_compact_json() -> None:
    assert snap.QUERY_BLOCK == '{"execute":"query-block"}'
    assert json.loads(snap.delete_command("libvirt-2-format", "s1")) == {
        "execute": "blockdev-snapshot-delete-internal-sync",
        "arguments": {"device": "libvirt-2-format", "name": "s1"},
    }


def test_create_transaction_takes_every_disk_in_one_transaction() -> None:
    command = json.loads(snap.create_transaction(["libvirt-3-format", "libvirt-2-format"], "s1"))
    assert command == {
        "execute": "transaction",
        "arguments": {
            "actions": [
                {
                    "type": "blockdev-snapshot-internal-sync",
                    "data": {"device": "libvirt-3-format", "name": "s1"},
                },
                {
                    "type": "blockdev-snapshot-internal-sync",
                    "data": {"device": "libvirt-2-format", "name": "s1"},
                },
            ]
        },
    }


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ('{"return":{},"id":"libvirt-414"}', None),
        ('{"return":[]}', None),
        (
            '{"id":"libvirt-415","error":{"class":"GenericError","desc":"Snapshot with name '
            "'s1' already exists on device 'libvirt-3-format'\"}}",
            "Snapshot with name 's1' already exists on device 'libvirt-3-format'",
        ),
        ('{"error":{"class":"CommandNotFound"}}', "CommandNotFound"),
        ("error: failed to get domain 'web-1'", "not a QMP answer"),
        ("[1, 2]", "not a QMP answer"),
        ('{"event":"STOP"}', "not a QMP answer"),
    ],
)
def test_qmp_error(answer: str, error: str | None) -> None:
    found = snap.qmp_error(answer)
    assert found == error if error is None else (found is not None and error in found)


def test_check_qmp_raises_remote_command_failed_naming_the_node() -> None:
    snap.check_qmp("kvm1", "query-block", '{"return":[]}')
    with pytest.raises(RemoteCommandFailed, match=r"on node kvm1: .*no such device"):
        snap.check_qmp("kvm1", "query-block", '{"error":{"desc":"no such device"}}')


def test_block_nodes_finds_the_disks_by_file_in_their_order() -> None:
    text = json.dumps(QUERY_BLOCK)
    assert snap.block_nodes(text, [ROOT, DATA]) == ["libvirt-3-format", "libvirt-2-format"]
    assert snap.block_nodes(text, [ROOT]) == ["libvirt-3-format"]


def test_block_nodes_falls_back_to_the_qdev_of_vda_and_vdb() -> None:
    moved = json.loads(json.dumps(QUERY_BLOCK))
    for entry in moved["return"]:
        entry["inserted"]["file"] = "/elsewhere"
        entry["inserted"]["image"]["filename"] = "/elsewhere"
    assert snap.block_nodes(json.dumps(moved), [ROOT, DATA]) == [
        "libvirt-3-format",
        "libvirt-2-format",
    ]


def test_block_nodes_refuses_a_disk_that_is_not_attached_and_odd_answers() -> None:
    only_root = {"return": QUERY_BLOCK["return"][:1]}  # type: ignore[index]
    with pytest.raises(ValueError, match=r"data\.qcow2"):
        snap.block_nodes(json.dumps(only_root), [ROOT, DATA])
    empty_drive = {"return": [{"device": "", "qdev": "x", "type": "unknown"}]}
    with pytest.raises(ValueError, match=r"root\.qcow2"):
        snap.block_nodes(json.dumps(empty_drive), [ROOT])
    for odd in ('{"error":{"desc":"x"}}', "[]"):
        with pytest.raises(ValueError, match="unexpected answer"):
            snap.block_nodes(odd, [ROOT])


def test_parse_snapshot_list_reads_the_tags() -> None:
    assert snap.parse_snapshot_list(LISTING) == ["s1", "before-upgrade"]
    assert snap.parse_snapshot_list("") == []
    assert snap.parse_snapshot_list("Snapshot list:\nID  TAG  VM SIZE  DATE\n") == []


def test_parse_list_output_maps_each_disk_to_its_snapshots() -> None:
    output = f"== {ROOT}\n{LISTING}== {DATA}\n"
    assert snap.parse_list_output(output) == {ROOT: ["s1", "before-upgrade"], DATA: []}
    assert snap.parse_list_output("") == {}


def test_node_commands_pass_values_as_arguments_never_in_the_script() -> None:
    command = snap.list_command([ROOT, DATA])
    assert command[:2] == ["bash", "-c"] and command[3:] == ["snapshot.sh", "list", ROOT, DATA]
    assert "-U" in command[2]
    assert snap.create_stopped_command("s1", [ROOT])[4:] == ["create-stopped", "s1", ROOT]
    assert snap.revert_command("s1", [ROOT, DATA])[4:] == ["revert", "s1", ROOT, DATA]
    assert snap.delete_stopped_command("s1", [ROOT])[4:] == ["delete-stopped", "s1", ROOT]
    running = snap.create_running_command("web-1", "s1", [ROOT], '{"execute":"x"}', "yes")
    assert running[4:] == ["create-running", "web-1", "yes", '{"execute":"x"}', "s1", ROOT]
    assert "web-1" not in running[2] and "s1" not in running[2]
    assert snap.monitor_command("web-1", snap.QUERY_BLOCK)[-3:] == [
        "qemu-monitor-command",
        "web-1",
        '{"execute":"query-block"}',
    ]


def test_the_script_documents_and_uses_the_exit_codes_of_the_python_constants() -> None:
    text = (REPO / "scripts" / "snapshot.sh").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for name, value in (("EXISTS", snap.EXISTS), ("NO_FREEZE", snap.NO_FREEZE)):
        documented = re.search(rf"\b(\d+) \({name}\)", header)  # "Exit codes: ... 4 (EXISTS)"
        assigned = re.search(rf"^{name}=(\d+)$", text, re.M)  # what the script exits with
        assert documented and assigned and documented[1] == assigned[1] == str(value), name


def test_create_running_command_refuses_an_unknown_quiesce() -> None:
    with pytest.raises(ValueError, match="quiesce"):
        snap.create_running_command("web-1", "s1", [ROOT], "{}", "maybe")


def test_parse_quiesced() -> None:
    assert snap.parse_quiesced("quiesced=1\n") is True
    assert snap.parse_quiesced("noise\nquiesced=0\n") is False
    with pytest.raises(ValueError, match="quiesced"):
        snap.parse_quiesced("")


def test_as_dict_has_stable_keys() -> None:
    made = snap.Snapshot("web-1", "s1", "running", True, NOW, "ann@host")
    assert snap.as_dict(made) == {
        "vm": "web-1",
        "name": "s1",
        "vm_state": "running",
        "quiesced": True,
        "created_at": NOW,
        "actor": "ann@host",
    }


# -- the node scripts, run locally on real qcow2 files -----------------------------------------

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="no qemu-img")


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def disks(tmp_path: Path) -> list[str]:
    paths = [str(tmp_path / "root.qcow2"), str(tmp_path / "data.qcow2")]
    for path in paths:
        assert run(["qemu-img", "create", "-q", "-f", "qcow2", path, "16M"]).returncode == 0
    return paths


def tags(paths: list[str]) -> dict[str, list[str]]:
    out = run(snap.list_command(paths))
    assert out.returncode == 0, out.stderr
    return snap.parse_list_output(out.stdout)


def write(path: str, text: str) -> None:
    proc = run(["qemu-io", "-f", "qcow2", "-c", f"write -P {ord(text)} 0 4k", path])
    assert proc.returncode == 0, proc.stderr


def read_is(path: str, text: str) -> bool:
    proc = run(["qemu-io", "-f", "qcow2", "-c", f"read -P {ord(text)} 0 4k", path])
    return proc.returncode == 0 and "Pattern verification failed" not in proc.stdout


@needs_qemu_img
def test_stopped_create_revert_delete_on_real_images(disks: list[str]) -> None:
    assert tags(disks) == {disks[0]: [], disks[1]: []}
    for path in disks:
        write(path, "a")
    assert run(snap.create_stopped_command("s1", disks)).returncode == 0
    assert tags(disks) == {disks[0]: ["s1"], disks[1]: ["s1"]}
    for path in disks:
        write(path, "b")
    proc = run(snap.revert_command("s1", disks))
    assert proc.returncode == 0, proc.stderr
    assert all(read_is(path, "a") for path in disks)
    assert run(snap.delete_stopped_command("s1", disks)).returncode == 0
    assert tags(disks) == {disks[0]: [], disks[1]: []}


@needs_qemu_img
def test_stopped_create_refuses_a_name_a_disk_has_and_changes_none(disks: list[str]) -> None:
    assert run(["qemu-img", "snapshot", "-c", "s1", disks[1]]).returncode == 0
    proc = run(snap.create_stopped_command("s1", disks))
    assert proc.returncode == snap.EXISTS
    assert "has a snapshot named s1 already" in proc.stderr
    assert tags(disks) == {disks[0]: [], disks[1]: ["s1"]}


@needs_qemu_img
def test_stopped_create_undoes_the_disks_done_when_one_fails(disks: list[str]) -> None:
    readonly = disks[1]
    os.chmod(readonly, 0o444)
    if os.access(readonly, os.W_OK):  # root ignores the mode: a missing file fails instead
        os.chmod(readonly, 0o644)
        readonly = readonly + ".missing"
    proc = run(snap.create_stopped_command("s1", [disks[0], readonly]))
    assert proc.returncode != 0
    assert tags([disks[0]]) == {disks[0]: []}


@needs_qemu_img
def test_revert_changes_no_disk_when_one_lacks_the_snapshot(disks: list[str]) -> None:
    write(disks[0], "a")
    assert run(["qemu-img", "snapshot", "-c", "s1", disks[0]]).returncode == 0
    write(disks[0], "b")
    proc = run(snap.revert_command("s1", disks))
    assert proc.returncode == 3 and "has no snapshot s1" in proc.stderr
    assert read_is(disks[0], "b")


@pytest.fixture
def fake_virsh(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A `virsh` that logs its arguments; FREEZE=fail|hang and QMP=error change its answers."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "virsh.log"
    (bin_dir / "virsh").write_text(
        f"""#!/bin/bash
args="$*"
echo "$args" >> {log}
case $args in
  *domfsfreeze*)
    [ "${{FREEZE:-}}" = hang ] && exec sleep 30
    if [ "${{FREEZE:-}}" = fail ]; then
      echo "error: Guest agent is not responding: QEMU guest agent is not connected" >&2; exit 1
    fi
    echo "Froze 2 filesystem(s)" ;;
  *domfsthaw*) echo "Thawed 2 filesystem(s)" ;;
  *qemu-monitor-command*)
    if [ "${{QMP:-}}" = error ]; then echo '{{"error":{{"desc":"boom"}}}}'
    else echo '{{"return":{{}}}}'; fi ;;
esac
"""
    )
    (bin_dir / "virsh").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def verbs(log: Path) -> list[str]:
    words = ("domfsfreeze", "qemu-monitor-command", "domfsthaw")
    return [next(w for w in words if w in line) for line in log.read_text().splitlines()]


@needs_qemu_img
def test_running_create_freezes_takes_and_thaws(
    fake_virsh: tuple[dict[str, str], Path], disks: list[str]
) -> None:
    env, log = fake_virsh
    command = snap.create_running_command("web-1", "s1", disks, '{"execute":"x"}', "yes")
    proc = run(command, env)
    assert proc.returncode == 0, proc.stderr
    assert snap.parse_quiesced(proc.stdout) is True
    assert verbs(log) == ["domfsfreeze", "qemu-monitor-command", "domfsthaw"]
    assert 'qemu-monitor-command web-1 {"execute":"x"}' in log.read_text()


@needs_qemu_img
def test_running_create_thaws_when_qmp_fails(
    fake_virsh: tuple[dict[str, str], Path], disks: list[str]
) -> None:
    env, log = fake_virsh
    proc = run(
        snap.create_running_command("web-1", "s1", disks, "{}", "yes"), {**env, "QMP": "error"}
    )
    assert proc.returncode == 1 and "boom" in proc.stderr
    assert verbs(log) == ["domfsfreeze", "qemu-monitor-command", "domfsthaw"]


@needs_qemu_img
def test_running_create_without_an_agent_refuses_or_goes_unfrozen(
    fake_virsh: tuple[dict[str, str], Path], disks: list[str]
) -> None:
    env, log = fake_virsh
    env = {**env, "FREEZE": "fail"}
    proc = run(snap.create_running_command("web-1", "s1", disks, "{}", "yes"), env)
    assert proc.returncode == snap.NO_FREEZE
    assert "did not freeze the filesystems: error: Guest agent is not responding" in proc.stderr
    assert "qemu-monitor-command" not in verbs(log)
    log.unlink()
    proc = run(snap.create_running_command("web-1", "s1", disks, "{}", "try"), env)
    assert proc.returncode == 0 and snap.parse_quiesced(proc.stdout) is False
    assert verbs(log) == ["domfsfreeze", "qemu-monitor-command", "domfsthaw"]
    log.unlink()
    proc = run(snap.create_running_command("web-1", "s1", disks, "{}", "no"), env)
    assert proc.returncode == 0 and snap.parse_quiesced(proc.stdout) is False
    assert verbs(log) == ["qemu-monitor-command"]


@needs_qemu_img
def test_running_create_refuses_a_name_a_disk_has_before_freezing(
    fake_virsh: tuple[dict[str, str], Path], disks: list[str]
) -> None:
    env, log = fake_virsh
    assert run(["qemu-img", "snapshot", "-c", "s1", disks[0]]).returncode == 0
    proc = run(snap.create_running_command("web-1", "s1", disks, "{}", "yes"), env)
    assert proc.returncode == snap.EXISTS
    assert not log.exists()


@needs_qemu_img
def test_running_create_thaws_when_it_is_killed(
    fake_virsh: tuple[dict[str, str], Path], disks: list[str]
) -> None:
    """A dropped connection (SIGHUP) or a kill (SIGTERM) while frozen still thaws."""
    env, log = fake_virsh
    command = snap.create_running_command("web-1", "s1", disks, "{}", "yes")
    for sig in (signal.SIGHUP, signal.SIGTERM):
        if log.exists():
            log.unlink()
        proc = subprocess.Popen(
            command, env={**env, "FREEZE": "hang"}, text=True, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while not (log.exists() and "domfsfreeze" in log.read_text()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, sig)  # as a hang-up reaches a session: the script and the freeze
        assert proc.wait(timeout=10) != 0
        assert verbs(log) == ["domfsfreeze", "domfsthaw"]


# -- the service over fakes --------------------------------------------------------------------


class SnapStore(FakeStore):
    """FakeStore with the snapshots table."""

    def __init__(self) -> None:
        super().__init__()
        self.snaps: dict[tuple[str, str], snap.Snapshot] = {}

    def add_snapshot(self, vm: str, name: str, vm_state: str, quiesced: bool) -> snap.Snapshot:
        self._call("add_snapshot")
        if (vm, name) in self.snaps:
            raise Conflict(f"{vm} has a snapshot named {name} already")
        made = snap.Snapshot(vm, name, vm_state, quiesced, datetime.now(UTC), "test@test")
        self.snaps[(vm, name)] = made
        return made

    def snapshots(self, vm: str) -> list[snap.Snapshot]:
        return [s for (v, _n), s in self.snaps.items() if v == vm]

    def get_snapshot(self, vm: str, name: str) -> snap.Snapshot:
        if (vm, name) not in self.snaps:
            raise NotFound(f"{vm} has no snapshot named {name}")
        return self.snaps[(vm, name)]

    def delete_snapshot(self, vm: str, name: str) -> bool:
        return self.snaps.pop((vm, name), None) is not None


class SnapHypervisor(FakeHypervisor):
    """FakeHypervisor whose disks hold internal snapshots; ``agent`` says if fs-freeze works."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.tags: dict[str, list[str]] = {}
        self.agent = True
        self.reverted: list[tuple[str, list[str]]] = []

    def snapshots(self, name: str) -> dict[str, list[str]]:
        self._call("snapshots")
        return {path: list(t) for path, t in self.tags.items() if f"/{name}/" in path}

    def snapshot_create(
        self, name: str, data_disk: bool, snapshot: str, running: bool, quiesce: str = "yes"
    ) -> bool:
        self._call(f"snapshot_create:{'running' if running else 'stopped'}")
        paths = snap.disk_paths("/srv/vms", name, data_disk)
        if running and not self.agent and quiesce == "yes":
            raise Unavailable(f"{name}: the guest agent did not freeze the filesystems")
        for path in paths:
            self.tags.setdefault(path, []).append(snapshot)
        return running and self.agent and quiesce != "no"

    def snapshot_revert(self, name: str, data_disk: bool, snapshot: str) -> None:
        self._call("snapshot_revert")
        paths = snap.disk_paths("/srv/vms", name, data_disk)
        assert self.states.get(name) == "shut off", "reverted a running domain"
        if any(snapshot not in self.tags.get(p, []) for p in paths):
            raise NotFound(f"{name}: a disk has no snapshot {snapshot}")
        self.reverted.append((snapshot, list(paths)))

    def snapshot_delete(self, name: str, data_disk: bool, snapshot: str, running: bool) -> None:
        self._call("snapshot_delete")
        for path in snap.disk_paths("/srv/vms", name, data_disk):
            if snapshot in self.tags.get(path, []):
                self.tags[path].remove(snapshot)


def snap_world(state: str = "running") -> tuple[World, SnapStore, SnapHypervisor]:
    w = world()
    store, hv = SnapStore(), SnapHypervisor("kvm1")
    w.svc.store = store
    w.store = store
    w.nodes["kvm1"] = hv
    w.svc.create(CreateRequest("web-1", node="kvm1"))
    hv.states["web-1"] = state
    store.logged.clear()
    return w, store, hv


def test_create_running_is_quiesced_recorded_and_logged() -> None:
    w, store, hv = snap_world()
    made = w.svc.snapshot_create("web-1", "s1")
    assert (made.vm, made.name, made.vm_state, made.quiesced) == ("web-1", "s1", "running", True)
    assert hv.tags == {ROOT: ["s1"], DATA: ["s1"]}
    assert [s.name for s in w.svc.snapshot_list("web-1")] == ["s1"]
    assert store.logged[-1][2:] == (
        "snapshot-create",
        "ok",
        {
            "actor": "test@test",
            "snapshot": "s1",
            "vm_state": "running",
            "quiesced": True,
        },
    )
    assert "vm_lock" in store.calls


def test_create_stopped_uses_the_stopped_path() -> None:
    w, _store, hv = snap_world("shut off")
    made = w.svc.snapshot_create("web-1", "s1")
    assert (made.vm_state, made.quiesced) == ("stopped", False)
    assert "snapshot_create:stopped" in hv.calls


def test_create_without_an_agent_is_refused_unless_not_quiesced() -> None:
    w, store, hv = snap_world()
    hv.agent = False
    with pytest.raises(Unavailable, match="guest agent"):
        w.svc.snapshot_create("web-1", "s1")
    assert store.snaps == {} and hv.tags == {}
    assert store.events_of("web-1") == [("snapshot-create", "failed")]
    made = w.svc.snapshot_create("web-1", "s1", quiesce=False)
    assert made.quiesced is False and store.logged[-1][4]["quiesced"] is False


def test_create_refuses_a_duplicate_and_bad_names_before_the_node() -> None:
    w, _store, hv = snap_world()
    w.svc.snapshot_create("web-1", "s1")
    hv.calls.clear()
    with pytest.raises(Conflict):
        w.svc.snapshot_create("web-1", "s1")
    with pytest.raises(InvalidInput, match="snapshot"):
        w.svc.snapshot_create("web-1", "Bad_Name")
    with pytest.raises(NotFound):
        w.svc.snapshot_create("web-9", "s1")
    assert not any(c.startswith("snapshot_create") for c in hv.calls)


def test_create_not_recorded_is_removed_from_the_node() -> None:
    w, store, hv = snap_world()
    store.fail_at["add_snapshot"] = RuntimeError("PostgreSQL went away")
    with pytest.raises(RuntimeError):
        w.svc.snapshot_create("web-1", "s1")
    assert hv.tags == {ROOT: [], DATA: []} and "snapshot_delete" in hv.calls
    assert store.events_of("web-1") == [("snapshot-create", "failed")]


def test_a_paused_or_missing_domain_is_refused() -> None:
    w, _store, hv = snap_world("paused")
    with pytest.raises(WrongState, match="paused"):
        w.svc.snapshot_create("web-1", "s1")
    hv.defined.discard("web-1")
    with pytest.raises(NotFound, match="no such domain there"):
        w.svc.snapshot_create("web-1", "s1")


def test_another_operation_on_the_vm_makes_it_busy() -> None:
    w, store, _hv = snap_world()
    store.held["web-1"] = "delete"
    with pytest.raises(Busy):
        w.svc.snapshot_create("web-1", "s1")


def test_revert_running_powers_off_reverts_and_starts_again() -> None:
    w, store, hv = snap_world()
    w.svc.snapshot_create("web-1", "s1")
    hv.calls.clear()
    vm = w.svc.snapshot_revert("web-1", "s1")
    assert [c for c in hv.calls if c != "state"] == ["destroy", "snapshot_revert", "start"]
    assert hv.reverted == [("s1", [ROOT, DATA])]
    assert vm.state == "running" and hv.states["web-1"] == "running"
    assert store.events_of("web-1")[-1] == ("snapshot-revert", "ok")


def test_revert_stopped_stays_stopped() -> None:
    w, _store, hv = snap_world("shut off")
    w.svc.snapshot_create("web-1", "s1")
    vm = w.svc.snapshot_revert("web-1", "s1")
    assert vm.state == "stopped" and "start" not in hv.calls and "destroy" not in hv.calls


def test_revert_unknown_is_not_found_and_a_node_without_it_restarts_the_vm() -> None:
    w, store, hv = snap_world()
    with pytest.raises(NotFound):
        w.svc.snapshot_revert("web-1", "nope")
    assert "destroy" not in hv.calls
    store.add_snapshot("web-1", "ghost", "running", True)  # recorded, absent from the disks
    with pytest.raises(NotFound):
        w.svc.snapshot_revert("web-1", "ghost")
    assert hv.states["web-1"] == "running"
    assert store.events_of("web-1")[-1] == ("snapshot-revert", "failed")


def test_delete_removes_it_from_the_disks_that_hold_it_and_postgres() -> None:
    w, store, hv = snap_world()
    w.svc.snapshot_create("web-1", "s1")
    hv.tags[DATA].remove("s1")  # lost from one disk somehow
    w.svc.snapshot_delete("web-1", "s1")
    assert hv.tags == {ROOT: [], DATA: []} and store.snaps == {}
    assert store.logged[-1][2:4] == ("snapshot-delete", "ok")
    assert store.logged[-1][4]["missing_on_node"] == [DATA]
    with pytest.raises(NotFound):
        w.svc.snapshot_delete("web-1", "s1")
