"""`vmctl reconcile` without a lab: the survey parser, ``compare`` for every kind of drift (and
what is never drift: foreign and unmarked things, work in progress), the repairs through fakes,
and watch-ip's periodic report."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Any

import pytest

from tests.unit.fakes import INVENTORY, FakeCache, FakeStorage, FakeStore, UnusedHypervisor
from vmctl.core import drift as dr
from vmctl.core import reconcile as rc
from vmctl.core import survey as sv
from vmctl.core.errors import NodeUnreachable, RemoteCommandFailed
from vmctl.core.inventory import AddressPool, Inventory
from vmctl.core.records import Mark, VmRecord
from vmctl.core.snapshots import Snapshot
from vmctl.services.reconcile import Reconciler
from vmctl.services.watcher import Watcher

pytestmark = pytest.mark.unit

OURS = "00000000-0000-4000-8000-000000000001"  # FakeStore.installation_id()
OTHER = "11111111-1111-4111-8111-111111111111"
T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
POOL = AddressPool("10.9.1.0/24", IPv4Address("10.9.1.10"), IPv4Address("10.9.1.99"))
STORAGE = "/srv/vms"


def row(name: str, state: str = "running", node: str = "kvm1", **kw: Any) -> VmRecord:
    values: dict[str, Any] = {
        "id": abs(hash(name)) % 10_000 + 1,
        "name": name,
        "node": node,
        "state": state,
        "ram_mb": 512,
        "cpu": 1,
        "disk_gb": 1,
        "root_gb": 4,
        "image": "debian-12",
        "mac": "52:54:00:00:00:01",
        "host_key": None,
        "ip": None,
        "ip_state": None,
        "group_name": None,
        "project": None,
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(kw)
    return VmRecord(**values)


def dom(r: VmRecord, state: str = "running", installation: str = OURS) -> sv.Domain:
    return sv.Domain(r.name, state, Mark(installation, r.id, r.name, "m1"))


def vmdir(name: str, installation: str | None = OURS, record_id: int = 1) -> sv.VmDir:
    marker = "set" if installation else "none"
    return sv.VmDir(name, marker, installation, record_id, ("root.qcow2", "seed.iso"))


def kinds(drift: list[dr.Drift]) -> set[tuple[str, str | None]]:
    return {(d.kind, d.vm) for d in drift}


def compare(rows: list[VmRecord], survey: sv.NodeSurvey, **kw: Any) -> list[dr.Drift]:
    kw.setdefault("pools", {"kvm1": POOL})
    kw.setdefault("storage", {"kvm1": STORAGE})
    return rc.compare(rows, [survey], kw.pop("cache", {}), OURS, kw.pop("free", set()), **kw)


# -- the parser -----------------------------------------------------------------------------

SURVEY = f"""survey\t1
domain\tweb-1\trunning\t<vm>   <image>debian-12</image>   <name>web-1</name>   <id>7</id>   \
<installation>{OURS}</installation>   <manager>m1</manager> </vm>
domain\thand\tshut off\t
dir\tweb-1\tset\t{OURS}\t7\tconsole.log/data.qcow2/root.qcow2/seed.iso/.vmctl
dir\told\tempty\t\t\t.vmctl
dir\tstuff\tnone\t\t\ta.txt
snapshot\tweb-1\troot.qcow2\tbefore
staging\tweb-2.0a1b2c3d\t42
network\tvmnet\tactive
host\tlive\t52:54:00:AA:00:01\tweb-1\t10.9.1.10
host\tconfig\t52:54:00:aa:00:01\tweb-1\t10.9.1.10
end
"""


def test_the_survey_is_parsed_and_virsh_metadata_without_namespace_gives_the_mark() -> None:
    s = sv.parse_survey("kvm1", SURVEY)
    assert s.domains == (
        sv.Domain("web-1", "running", Mark(OURS, 7, "web-1", "m1")),
        sv.Domain("hand", "shut off", None),
    )
    assert s.dirs[0] == sv.VmDir(
        "web-1", "set", OURS, 7, (".vmctl", "console.log", "data.qcow2", "root.qcow2", "seed.iso")
    )
    assert s.dirs[1] == sv.VmDir("old", "empty", None, None, (".vmctl",))
    assert s.dirs[2].marker == "none"
    assert s.snapshots == (sv.DiskSnapshot("web-1", "root.qcow2", "before"),)
    assert s.staging == (sv.Staging("web-2.0a1b2c3d", 42),)
    assert s.staging[0].vm == "web-2"
    assert (s.network, s.network_state) == ("vmnet", "active")
    assert {h.mac for h in s.hosts} == {"52:54:00:aa:00:01"}
    assert [h.scope for h in s.hosts] == ["live", "config"]


@pytest.mark.parametrize(
    "text",
    ["", "hello\nend\n", "survey\t1\ndomain\tx\trunning\t\n", "survey\t1\nbogus\tline\nend\n"],
)
def test_an_incomplete_or_strange_survey_is_refused(text: str) -> None:
    with pytest.raises(RemoteCommandFailed):
        sv.parse_survey("kvm1", text)


def test_repair_commands_take_only_what_vmctl_names() -> None:
    assert sv.remove_staging_command(STORAGE, "web-1.0a1b2c3d") == [
        "rm",
        "-rf",
        "--",
        "/srv/vms/.staging/web-1.0a1b2c3d",
    ]
    for bad in ("../etc", "web-1", "web-1.0a1b2c3d/..", "Web.0a1b2c3d"):
        with pytest.raises(ValueError):
            sv.remove_staging_command(STORAGE, bad)
    argv = sv.unreserve_command("vmnet", "52:54:00:AA:00:01", "10.9.1.10")
    assert argv[3:] == ["unreserve", "vmnet", "52:54:00:aa:00:01", "10.9.1.10"]
    with pytest.raises(ValueError):
        sv.unreserve_command("vmnet", "52:54:00:aa:00:01", "10.9.1.10; reboot")
    assert sv.survey_args(STORAGE, "vmnet") == ["--storage", STORAGE, "--network", "vmnet"]


# -- compare: every kind ----------------------------------------------------------------------


def test_a_clean_node_has_no_drift() -> None:
    r = row("web-1", ip="10.9.1.10", reserved_ip="10.9.1.10", mac="52:54:00:aa:00:01")
    s = sv.NodeSurvey(
        "kvm1",
        domains=(dom(r),),
        dirs=(vmdir("web-1", record_id=r.id),),
        hosts=(sv.Host("live", "52:54:00:aa:00:01", "web-1", "10.9.1.10"),),
    )
    assert compare([r], s, cache={"vmctl:vm:web-1:node": "kvm1"}) == []


def test_row_without_domain_is_fixed_by_marking_error_never_by_deleting() -> None:
    (d,) = compare([row("web-1", "stopped")], sv.NodeSurvey("kvm1"))
    assert (d.kind, d.vm, d.node) == (dr.ROW_WITHOUT_DOMAIN, "web-1", "kvm1")
    assert d.fix is not None and "error" in d.fix


def test_a_domain_with_our_mark_and_no_row_is_drift_and_its_directory_goes_with_it() -> None:
    ghost = row("ghost")
    s = sv.NodeSurvey("kvm1", domains=(dom(ghost, "shut off"),), dirs=(vmdir("ghost"),))
    assert kinds(compare([], s)) == {(dr.DOMAIN_WITHOUT_ROW, "ghost")}
    # recorded on the other node: this node's domain is still without its row
    (d,) = compare([row("ghost", node="kvm2")], replace(s, dirs=()))
    assert d.kind == dr.DOMAIN_WITHOUT_ROW and "recorded on kvm2" in d.detail


def test_a_marked_domain_whose_name_belongs_to_another_row_is_reported_not_fixed() -> None:
    old = row("web-1", id=3)
    s = sv.NodeSurvey("kvm1", domains=(dom(old),))
    (d,) = compare([row("web-1", id=9)], s)
    assert d.kind == dr.DOMAIN_WITHOUT_ROW and d.fix is None


def test_unmarked_and_other_installations_things_are_foreign_never_drift() -> None:
    theirs = row("theirs")
    s = sv.NodeSurvey(
        "kvm1",
        domains=(sv.Domain("hand", "running", None), dom(theirs, installation=OTHER)),
        dirs=(vmdir("stuff", None), vmdir("theirs", OTHER), sv.VmDir("old", "empty", None, None)),
        staging=(sv.Staging("not-ours", 5),),
        hosts=(sv.Host("live", "52:54:00:ff:00:01", "lan", "10.9.1.200"),),  # outside the pool
    )
    found = compare([], s)
    assert {d.kind for d in found} == {dr.FOREIGN}
    assert all(d.info and d.fix is None for d in found)
    assert {d.subject for d in found} == {
        "domain hand",
        "domain theirs",
        f"{STORAGE}/stuff",  # (theirs/ goes with domain theirs: one item)
        f"{STORAGE}/old",
        f"{STORAGE}/.staging/not-ours",
    }


def test_orphan_dir_staging_and_reservation() -> None:
    s = sv.NodeSurvey(
        "kvm1",
        dirs=(vmdir("gone"),),
        staging=(sv.Staging("gone.0a1b2c3d", 600),),
        hosts=(
            sv.Host("live", "52:54:00:aa:00:09", "gone", "10.9.1.42"),
            sv.Host("config", "52:54:00:aa:00:09", "gone", "10.9.1.42"),
        ),
        network="vmnet",
    )
    found = compare([], s)
    assert kinds(found) == {
        (dr.ORPHAN_DIR, "gone"),
        (dr.ORPHAN_STAGING, "gone"),
        (dr.ORPHAN_RESERVATION, "gone"),
    }
    res = next(d for d in found if d.kind == dr.ORPHAN_RESERVATION)
    assert dict(res.data) == {"network": "vmnet", "mac": "52:54:00:aa:00:09", "ip": "10.9.1.42"}
    assert "live+config" in res.detail  # one item for both scopes
    # a row with that MAC or that address: not an orphan; a staging dir of a create at work: fine
    busy = row("gone", "creating", mac="52:54:00:aa:00:09")
    assert compare([busy], s) == []


def test_wrong_state_follows_libvirt() -> None:
    r = row("web-1", "running")
    (d,) = compare([r], sv.NodeSurvey("kvm1", domains=(dom(r, "shut off"),)))
    assert (d.kind, d.data["state"]) == (dr.WRONG_STATE, "stopped")
    s = row("web-2", "stopped")
    (d,) = compare([s], sv.NodeSurvey("kvm1", domains=(dom(s, "running"),)))
    assert (d.kind, d.data["state"]) == (dr.WRONG_STATE, "running")
    assert compare([r], sv.NodeSurvey("kvm1", domains=(dom(r, "paused"),))) == []


def test_stale_cache_keys() -> None:
    cache = {
        "vmctl:vm:nobody:node": "kvm1",
        "vmctl:vm:web-1:node": "kvm2",
        "vmctl:vm:web-2:node": "kvm1",
        "vmctl:other": None,
    }
    rows = [row("web-1"), row("web-2")]
    survey = sv.NodeSurvey("kvm1", domains=tuple(dom(r) for r in rows))
    found = compare(rows, survey, cache=cache)
    assert kinds(found) == {(dr.STALE_CACHE, "nobody"), (dr.STALE_CACHE, "web-1")}


def test_stuck_rows_only_when_no_process_holds_them() -> None:
    rows = [row("new", "creating"), row("old", "deleting")]
    assert compare(rows, sv.NodeSurvey("kvm1")) == []  # held: at work
    found = compare(rows, sv.NodeSurvey("kvm1"), free={"new", "old"})
    assert kinds(found) == {(dr.STUCK_CREATING, "new"), (dr.STUCK_DELETING, "old")}


def test_a_move_is_one_stuck_row_once_no_process_holds_it_and_its_part_there_is_no_orphan() -> None:
    mac = "52:54:00:aa:00:07"
    moving = row("mv-1", node="kvm2", move_node="kvm1", move_ip="10.9.1.50", mac=mac)
    target = sv.NodeSurvey(  # kvm1, where it goes: the domain, its directory and reservation
        "kvm1",
        domains=(dom(moving, "shut off"),),
        dirs=(vmdir("mv-1", record_id=moving.id),),
        hosts=(sv.Host("config", mac, "mv-1", "10.9.1.50"),),
    )
    source = sv.NodeSurvey("kvm2", domains=(dom(moving, "shut off"),))
    pools = {"kvm1": POOL, "kvm2": POOL}
    both = rc.compare([moving], [target, source], {}, OURS, set(), pools=pools)
    assert both == []  # at work: neither its part on kvm1 nor its shut-off state on kvm2
    stuck = rc.compare([moving], [target, source], {}, OURS, {"mv-1"}, pools=pools)
    assert kinds(stuck) == {(dr.STUCK_MOVING, "mv-1")}
    (d,) = stuck
    assert d.node == "kvm2" and d.fix is not None and "forward if it runs on kvm1" in d.fix


def test_rows_on_a_node_not_surveyed_are_not_judged() -> None:
    assert rc.compare([row("web-1", node="kvm2")], [sv.NodeSurvey("kvm1")], {}, OURS, set()) == []


def test_snapshots_on_disk_and_in_postgresql() -> None:
    r = row("web-1")
    s = sv.NodeSurvey(
        "kvm1",
        domains=(dom(r),),
        dirs=(sv.VmDir("web-1", "set", OURS, r.id, ("data.qcow2", "root.qcow2")),),
        snapshots=(
            sv.DiskSnapshot("web-1", "root.qcow2", "a"),
            sv.DiskSnapshot("web-1", "data.qcow2", "a"),
            sv.DiskSnapshot("web-1", "root.qcow2", "half"),
            sv.DiskSnapshot("web-1", "root.qcow2", "stray"),
        ),
    )
    found = compare([r], s, snapshots={"web-1": ["a", "half"]})
    assert {(d.kind, d.subject) for d in found} == {
        (dr.SNAPSHOT_WITHOUT_ROW, "snapshot web-1/stray"),
        (dr.ROW_WITHOUT_SNAPSHOT, "snapshot web-1/half"),
    }
    assert all(d.fix is None for d in found)


# -- the service, over fakes --------------------------------------------------------------------


class Store(FakeStore):
    def snapshots(self, vm: str) -> list[Snapshot]:
        return []

    def snapshot_names(self) -> dict[str, list[str]]:
        return {}


class Node(UnusedHypervisor):
    """A node as the survey sees it; repairs change it."""

    def __init__(self, survey: sv.NodeSurvey, shared: str | None = None) -> None:
        self.now = survey
        self.done: list[str] = []
        self.storage = FakeStorage(shared=shared)
        self.listed_images: list[bool] = []

    def survey(self, network: str | None = None, images: bool = True) -> sv.NodeSurvey:
        self.listed_images.append(images)
        return self.now if images else replace(self.now, images=())

    def state(self, name: str) -> str | None:
        return next((d.state for d in self.now.domains if d.name == name), None)

    def delete(  # type: ignore[override]
        self,
        name: str,
        network: str | None = None,
        mac: str | None = None,
        installation: str | None = None,
        keep_disks: bool = False,
    ) -> None:
        self.done.append(f"delete {name}" + (" keep-disks" if keep_disks else ""))
        self.now = replace(
            self.now,
            domains=tuple(d for d in self.now.domains if d.name != name),
            dirs=tuple(d for d in self.now.dirs if d.name != name),
            staging=tuple(s for s in self.now.staging if s.vm != name),
            images=self.now.images
            if keep_disks
            else tuple(i for i in self.now.images if i.vm != name),
        )

    def remove_staging(self, entry: str) -> None:
        self.done.append(f"rm {entry}")
        self.now = replace(self.now, staging=tuple(s for s in self.now.staging if s.entry != entry))

    def unreserve(self, network: str, mac: str, ip: str) -> None:
        self.done.append(f"unreserve {mac} {ip}")
        self.now = replace(self.now, hosts=tuple(h for h in self.now.hosts if h.mac != mac))


def setup(survey: sv.NodeSurvey, rows: list[VmRecord]) -> tuple[Reconciler, Store, FakeCache, Node]:
    inventory = Inventory.model_validate(INVENTORY)
    nodes = {"kvm1": Node(survey)}
    store, cache = Store(), FakeCache()
    store.vms = {r.name: r for r in rows}

    def connect(node: Any) -> Node:
        if node.name not in nodes:
            raise NodeUnreachable(f"node {node.name}: Connection refused")
        return nodes[node.name]

    return Reconciler(inventory, store, cache, connect), store, cache, nodes["kvm1"]


def test_fix_repairs_what_is_safe_and_a_second_report_is_clean_on_that_node() -> None:
    r_state, r_nodom, r_stuck = row("st"), row("nodom", "stopped"), row("stuck", "creating")
    hand = sv.Domain("hand", "running", None)
    survey = sv.NodeSurvey(
        "kvm1",
        domains=(dom(r_state, "shut off"), dom(row("ghost")), hand),
        dirs=(vmdir("orphan"), vmdir("stuff", None)),
        staging=(sv.Staging("late.0a1b2c3d", 9),),
    )
    rec, store, cache, node = setup(survey, [r_state, r_nodom, r_stuck])
    cache.set_node("nobody", "kvm1")
    first = rec.report("kvm1")
    assert {d.kind for d in first.drift} == {
        dr.WRONG_STATE,
        dr.ROW_WITHOUT_DOMAIN,
        dr.STUCK_CREATING,
        dr.DOMAIN_WITHOUT_ROW,
        dr.ORPHAN_DIR,
        dr.ORPHAN_STAGING,
        dr.STALE_CACHE,
    }
    assert [d.subject for d in first.foreign] == ["domain hand", f"{STORAGE}/stuff"]
    out = rec.fix("kvm1")
    assert [a.result for a in out.actions] == ["fixed"] * 7, out.actions
    assert out.drift == [] and out.clean
    assert store.vms["st"].state == "stopped"
    assert store.vms["nodom"].state == "error"  # kept, marked
    assert "stuck" not in store.vms
    assert cache.get_node("nobody") is None
    assert "delete ghost" in node.done and "delete orphan" in node.done
    assert "rm late.0a1b2c3d" in node.done
    assert not any("hand" in d or "stuff" in d for d in node.done)  # foreign: never touched
    assert [e[2:4] for e in store.logged if e[0] == "stuck"] == [("reconcile", "ok")]


def test_a_busy_vm_is_skipped_and_a_node_that_does_not_answer_is_reported() -> None:
    stuck = row("stuck", "creating")
    rec, store, _cache, _node = setup(sv.NodeSurvey("kvm1"), [stuck])
    found = rec.report()
    assert set(found.unreachable) == {"kvm2"}
    (item,) = found.drift
    store.held["stuck"] = "create"  # the create came back to life
    (action,) = rec.apply([item])
    assert action.result == "skipped" and "busy" in action.detail
    assert "stuck" in store.vms


def test_watch_ip_records_each_new_drift_once_and_finishes_pending_deletes() -> None:
    survey = sv.NodeSurvey("kvm1", dirs=(vmdir("orphan"),))
    rec, store, cache, node = setup(survey, [row("leaving", "deleting")])
    inventory = Inventory.model_validate(INVENTORY)
    watcher = Watcher(
        inventory,
        store,  # type: ignore[arg-type]
        cache,
        rec.connect,
        logging.getLogger("test-reconcile"),
    )
    watcher.reconcile_periodically(300)
    assert sorted(watcher.reconcile_pass()) == [dr.ORPHAN_DIR, dr.STUCK_DELETING]
    assert "leaving" not in store.vms  # the pending delete was finished
    assert watcher.reconcile_pass() == []  # the orphan persists: not recorded again
    drift_events = [e for e in store.logged if e[2] == "drift"]
    assert [(e[0], e[4]["kind"]) for e in drift_events] == [
        ("leaving", dr.STUCK_DELETING),
        ("orphan", dr.ORPHAN_DIR),
    ]
    assert "delete orphan" not in node.done  # report mode: only pending deletes are finished


def test_between_reports_a_pending_delete_is_finished_within_the_pending_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from vmctl.services.watcher import drift as drift_mod
    from vmctl.services.watcher.drift import DriftWatch

    monkeypatch.setattr(drift_mod, "PENDING_DELETES_S", 0.05)
    rec, store, cache, _node = setup(sv.NodeSurvey("kvm1"), [row("kept", "running")])
    watch = DriftWatch(
        Inventory.model_validate(INVENTORY),
        store,  # type: ignore[arg-type]
        cache,
        rec.connect,
        logging.getLogger("test-reconcile"),
        "watch-ip@test",
    )
    passes: list[int] = []
    real = watch.report_once
    monkeypatch.setattr(watch, "report_once", lambda: passes.append(1) or real())
    stop = threading.Event()
    thread = threading.Thread(target=watch.loop, args=(stop,), kwargs={"every": 3600})
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not passes:  # the first report runs at once
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)
        assert len(passes) == 1  # nothing pending: no pass until the next report is due
        store.vms["leaving"] = row("leaving", "deleting")  # a delete that waited for its node
        while "leaving" in store.vms:
            assert time.monotonic() < deadline, "the pending delete was not finished"
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(5)
    assert len(passes) >= 2
