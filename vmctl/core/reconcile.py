"""`vmctl reconcile`, the pure part: ``compare`` finds the differences (``vmctl.core.drift``)
between what the nodes hold (``vmctl.core.survey``), PostgreSQL and Redis.

Only what carries this installation's mark is vmctl's: a domain whose metadata names our
installation, a VM directory whose ``.vmctl`` file does. Everything else on a node is reported at
most as ``foreign`` (information, never drift, never touched). Two things carry no mark and are
vmctl's by where they are: staging directories (``STORAGE/.staging/NAME.RANDOM``, a directory only
vmctl writes to) and DHCP reservations inside the network's vmctl address range.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from vmctl.core import drift as dr
from vmctl.core.records import RECORDED_STATES, VmRecord
from vmctl.core.survey import NodeSurvey

if TYPE_CHECKING:
    from vmctl.core.inventory import AddressPool

CACHE_KEY_RE = re.compile(r"vmctl:vm:(?P<vm>[^:]+):node")


def _in_pool(ip: str, pool: AddressPool | None) -> bool:
    if pool is None:
        return False
    try:
        address = IPv4Address(ip)
    except ValueError:
        return False
    return pool.first <= address <= pool.last


def cache_name(key: str) -> str | None:
    """The VM of a node cache key (``vmctl:vm:NAME:node``); None for any other key."""
    match = CACHE_KEY_RE.fullmatch(key)
    return match["vm"] if match else None


def compare(
    rows: Iterable[VmRecord],
    surveys: Iterable[NodeSurvey],
    cache_keys: Mapping[str, str | None],
    installation: str,
    locked_free: Collection[str],
    pools: Mapping[str, AddressPool | None] | None = None,
    storage: Mapping[str, str] | None = None,
    snapshots: Mapping[str, Collection[str]] | None = None,
) -> list[dr.Drift]:
    """Every difference between PostgreSQL (``rows``), the nodes surveyed and Redis
    (``cache_keys``: key -> the node it names), plus ``foreign`` information.

    ``locked_free``: the ``creating``/``deleting`` rows, and those with a move begun, whose lock
    was free (no process works on them: they are stuck). ``pools``: each node's vmctl address
    range (managed networks); ``storage``: each node's storage directory (for messages);
    ``snapshots``: the snapshot names PostgreSQL records, of the VMs whose snapshots are to be
    compared. Rows on nodes not surveyed are not judged."""
    rows = list(rows)
    pools = pools or {}
    storage = storage or {}
    by_name = {r.name: r for r in rows}
    drift: list[dr.Drift] = []
    for s in surveys:
        drift += _compare_node(s, rows, installation, locked_free, pools.get(s.node), storage)
        drift += _compare_snapshots(s, rows, installation, snapshots or {})
        drift += _compare_images(s, rows, installation, locked_free)
    for key, node in sorted(cache_keys.items()):
        name = cache_name(key)
        if name is None:
            continue
        row = by_name.get(name)
        if row is None:
            reason = f"no VM named {name} is recorded"
        elif node is not None and node != row.node:
            reason = f"it names node {node}; {name} is recorded on {row.node}"
        else:
            continue
        data = {"names": node or ""}
        drift.append(dr.Drift(dr.STALE_CACHE, node, name, key, reason, "forget the key", data))
    return drift


def _compare_node(
    s: NodeSurvey,
    rows: list[VmRecord],
    installation: str,
    locked_free: Collection[str],
    pool: AddressPool | None,
    storage: Mapping[str, str],
) -> list[dr.Drift]:
    node = s.node
    where = storage.get(node, "the storage directory")
    here = {r.name: r for r in rows if r.node == node}
    # a move's part here (under way, or stuck: reported with its row on the node it leaves)
    arriving = {r.name: r for r in rows if r.move_node == node and r.node != node}
    domains = {d.name: d for d in s.domains}
    drift: list[dr.Drift] = []

    def add(kind: str, vm: str | None, subject: str, detail: str, fix: str | None = None) -> None:
        drift.append(dr.Drift(kind, node, vm, subject, detail, fix))

    for r in here.values():
        if r.move_node is not None:  # a move at work (its state in flux), or stuck
            if r.name not in locked_free:
                continue
            add(
                dr.STUCK_MOVING,
                r.name,
                f"row {r.name}",
                f"a move to {r.move_node} began and no vmctl process holds it",
                f"end the move: forward if it runs on {r.move_node}, else undo it there (and "
                "start it again here if the move shut it down)",
            )
            continue
        if r.state in ("creating", "deleting"):
            if r.name in locked_free:
                kind = dr.STUCK_CREATING if r.state == "creating" else dr.STUCK_DELETING
                fix = (
                    "roll the create back: remove the VM from the node, forget its cache key, "
                    "delete its row"
                    if r.state == "creating"
                    else "finish the delete: remove the VM from the node, forget its cache key, "
                    "delete its row"
                )
                detail = f"row {r.id} is {r.state} and no vmctl process holds it"
                add(kind, r.name, f"row {r.name}", detail, fix)
            continue
        if r.state not in ("running", "stopped"):
            continue  # error: a person decides
        dom = domains.get(r.name)
        if dom is None:
            add(
                dr.ROW_WITHOUT_DOMAIN,
                r.name,
                f"row {r.name}",
                f"recorded {r.state} on {node}, which has no domain {r.name}",
                "record the VM as error (the row is kept)",
            )
        elif dom.mark is not None and dom.mark.installation != installation:
            add(
                dr.ROW_WITHOUT_DOMAIN,
                r.name,
                f"row {r.name}",
                f"domain {r.name} on {node} belongs to installation {dom.mark.installation}",
            )
        elif dom.state in RECORDED_STATES and RECORDED_STATES[dom.state] != r.state:
            want = RECORDED_STATES[dom.state]
            drift.append(
                dr.Drift(
                    dr.WRONG_STATE,
                    node,
                    r.name,
                    f"row {r.name}",
                    f"recorded {r.state}, libvirt says {dom.state}",
                    f"record {want} (libvirt is right about power)",
                    {"state": want},
                )
            )

    for dom in s.domains:
        ours = dom.mark is not None and dom.mark.installation == installation
        row = here.get(dom.name)
        if not ours:
            if row is None:
                whose = (
                    f"marked by installation {dom.mark.installation}"
                    if dom.mark is not None
                    else "no vmctl mark"
                )
                add(dr.FOREIGN, None, f"domain {dom.name}", f"{whose}; left alone")
            continue
        assert dom.mark is not None
        if row is None and dom.name in arriving:
            continue
        if row is None:
            elsewhere = next((r for r in rows if r.name == dom.name), None)
            note = f" ({dom.name} is recorded on {elsewhere.node})" if elsewhere else ""
            add(
                dr.DOMAIN_WITHOUT_ROW,
                dom.name,
                f"domain {dom.name}",
                f"{dom.state}, marked as row {dom.mark.record_id}, which does not exist here"
                + note,
                "destroy and undefine it, remove its directory",
            )
        elif row.id != dom.mark.record_id and row.state not in ("creating", "deleting"):
            add(
                dr.DOMAIN_WITHOUT_ROW,
                dom.name,
                f"domain {dom.name}",
                f"marked as row {dom.mark.record_id}, but row {row.id} has its name; "
                "a person decides",
            )

    for d in s.dirs:
        if d.installation != installation:
            if d.name not in here and d.name not in domains:
                whose = {
                    "none": "no .vmctl mark",
                    "empty": "a .vmctl mark without an installation",
                }.get(d.marker, f"marked by installation {d.installation}")
                add(dr.FOREIGN, None, f"{where}/{d.name}", f"directory with {whose}; left alone")
            continue
        if d.name in here or d.name in domains or d.name in arriving:
            continue  # the row's, or the domain's (domain-without-row removes it with it)
        drift.append(
            dr.Drift(
                dr.ORPHAN_DIR,
                node,
                d.name,
                f"{where}/{d.name}",
                f"marked as row {d.record_id}, no row and no domain; holds "
                + (", ".join(d.files) or "nothing"),
                "remove the directory (disks, seed, console log)",
            )
        )

    for st in s.staging:
        vm = st.vm
        if vm is None:
            add(dr.FOREIGN, None, f"{where}/.staging/{st.entry}", "not a vmctl name; left alone")
            continue
        row = here.get(vm)
        if row is not None and row.state in ("creating", "deleting"):
            continue  # a create at work, or part of a stuck row (its repair removes it)
        state = f"{vm} is {row.state}" if row else f"no VM {vm} is recorded on {node}"
        drift.append(
            dr.Drift(
                dr.ORPHAN_STAGING,
                node,
                vm,
                f"{where}/.staging/{st.entry}",
                f"{state}; left by a create that died ({st.age_s} s old)",
                "remove it",
                {"entry": st.entry},
            )
        )

    macs = {r.mac.lower() for r in (*here.values(), *arriving.values())}
    ips = {ip for r in here.values() for ip in (r.reserved_ip, r.ip) if ip}
    ips |= {r.move_ip for r in arriving.values() if r.move_ip}
    seen: dict[tuple[str, str, str], list[str]] = {}
    for h in s.hosts:
        seen.setdefault((h.mac, h.ip, h.name), []).append(h.scope)
    for (mac, ip, name), scopes in seen.items():
        if mac in macs or ip in ips:
            continue
        if not _in_pool(ip, pool):
            continue  # outside vmctl's range: someone else's
        drift.append(
            dr.Drift(
                dr.ORPHAN_RESERVATION,
                node,
                name or None,
                f"{s.network}: {mac} {ip}",
                f"reservation {name or '(no name)'} in vmctl's range ({'+'.join(scopes)}), "
                "no row has its MAC or address",
                "delete the reservation",
                {"network": s.network or "", "mac": mac, "ip": ip},
            )
        )
    return drift


def _compare_images(
    s: NodeSurvey, rows: list[VmRecord], installation: str, locked_free: Collection[str]
) -> list[dr.Drift]:
    """Images of shared storage (listed by one node of each pool) against the rows: an image of
    ours whose VM has no row anywhere is an orphan; unmarked or others' are foreign."""
    by_name = {r.name: r for r in rows}
    drift: list[dr.Drift] = []
    for image in s.images:
        row = by_name.get(image.vm)
        if image.installation != installation:
            if row is None:
                whose = (
                    f"marked by installation {image.installation}"
                    if image.installation
                    else "no vmctl mark"
                )
                drift.append(
                    dr.Drift(
                        dr.FOREIGN, s.node, None, f"image {image.name}", f"{whose}; left alone"
                    )
                )
            continue
        if row is not None:
            continue  # the row's (a stuck create or delete removes it with the VM)
        drift.append(
            dr.Drift(
                dr.ORPHAN_IMAGE,
                s.node,
                image.vm,
                f"image {image.name}",
                f"marked as row {image.record_id}, no VM {image.vm} is recorded"
                + (f"; snapshots {', '.join(image.snapshots)}" if image.snapshots else ""),
                "remove the VM's images (and their snapshots) from the pool",
            )
        )
    return drift


def _compare_snapshots(
    s: NodeSurvey,
    rows: list[VmRecord],
    installation: str,
    recorded: Mapping[str, Collection[str]],
) -> list[dr.Drift]:
    """The snapshots of each running or stopped VM's disks against its snapshot rows."""
    dirs = {d.name: d for d in s.dirs if d.installation == installation}
    images: dict[str, dict[str, set[str]]] = {}
    for image in s.images:
        if image.installation == installation and image.kind != "seed":
            images.setdefault(image.vm, {})[image.name] = set(image.snapshots)
    drift: list[dr.Drift] = []
    for r in rows:
        if r.state not in ("running", "stopped") or r.name not in recorded:
            continue
        d = dirs.get(r.name)
        on_disk: dict[str, set[str]]
        if r.name in images:  # in shared storage: whichever node listed the pool judges it
            on_disk = images[r.name]
        elif r.node == s.node and d is not None:
            on_disk = {f: set() for f in d.files if f.endswith(".qcow2")}
            for snap in s.snapshots:
                if snap.vm == r.name:
                    on_disk.setdefault(snap.file, set()).add(snap.tag)
        else:
            continue
        disks = sorted(on_disk)
        names = set(recorded[r.name])
        for tag in sorted(set().union(*on_disk.values()) - names):
            files = ", ".join(f for f in disks if tag in on_disk[f])
            drift.append(
                dr.Drift(
                    dr.SNAPSHOT_WITHOUT_ROW,
                    s.node,
                    r.name,
                    f"snapshot {r.name}/{tag}",
                    f"on {files}, not recorded in PostgreSQL (a snapshot that did not finish?)",
                )
            )
        for name in sorted(names):
            missing = [f for f in disks if name not in on_disk[f]]
            if missing:
                drift.append(
                    dr.Drift(
                        dr.ROW_WITHOUT_SNAPSHOT,
                        s.node,
                        r.name,
                        f"snapshot {r.name}/{name}",
                        f"recorded, but missing from {', '.join(missing)}: cannot be reverted to",
                    )
                )
    return drift
