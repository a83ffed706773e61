"""`vmctl reconcile`, the pure part: what a node holds (``NodeSurvey``, parsed from the output of
scripts/survey.sh), the differences from PostgreSQL and Redis (``Drift``), and ``compare``.

Only what carries this installation's mark is vmctl's: a domain whose metadata names our
installation, a VM directory whose ``.vmctl`` file does. Everything else on a node is reported at
most as ``foreign`` (information, never drift, never touched). Two things carry no mark and are
vmctl's by where they are: staging directories (``STORAGE/.staging/NAME.RANDOM``, a directory only
vmctl writes to) and DHCP reservations inside the network's vmctl address range.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from vmctl.core.domainxml import parse_mark
from vmctl.core.errors import RemoteCommandFailed
from vmctl.core.records import Mark, VmRecord

if TYPE_CHECKING:
    from vmctl.core.inventory import AddressPool

# -- the kinds of drift ------------------------------------------------------------------------

ROW_WITHOUT_DOMAIN = "row-without-domain"
DOMAIN_WITHOUT_ROW = "domain-without-row"
ORPHAN_DIR = "orphan-dir"  # a VM directory: disks, seed, console log
ORPHAN_STAGING = "orphan-staging"
ORPHAN_RESERVATION = "orphan-reservation"
WRONG_STATE = "wrong-state"
STALE_CACHE = "stale-cache-key"
SNAPSHOT_WITHOUT_ROW = "snapshot-without-row"  # on a disk, not recorded: reported only
ROW_WITHOUT_SNAPSHOT = "row-without-snapshot"  # recorded, missing from a disk: reported only
STUCK_CREATING = "stuck-creating"
STUCK_DELETING = "stuck-deleting"
FOREIGN = "foreign"  # information only: not vmctl's, never touched

KINDS = (
    STUCK_CREATING,
    STUCK_DELETING,
    DOMAIN_WITHOUT_ROW,
    ORPHAN_DIR,
    ORPHAN_STAGING,
    ORPHAN_RESERVATION,
    ROW_WITHOUT_DOMAIN,
    WRONG_STATE,
    STALE_CACHE,
    SNAPSHOT_WITHOUT_ROW,
    ROW_WITHOUT_SNAPSHOT,
)
"""Every kind of drift, in the order ``--fix`` repairs them (rows first: rolling back a stuck
create removes its domain, directory and reservation too)."""

# libvirt's power state -> the state vmctl records for it (others are passing: not judged)
RECORDED_STATE = {"running": "running", "shut off": "stopped"}

STAGING_RE = re.compile(r"(?P<vm>[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?)\.[0-9a-f]{8}")
MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
CACHE_KEY_RE = re.compile(r"vmctl:vm:(?P<vm>[^:]+):node")
SURVEY_VERSION = "1"


# -- what a node holds -------------------------------------------------------------------------


@dataclass(frozen=True)
class Domain:
    name: str
    state: str  # as `virsh domstate` prints it: "running", "shut off", "paused", ...
    mark: Mark | None  # vmctl's mark in its metadata, if any


@dataclass(frozen=True)
class VmDir:
    name: str
    marker: str  # "none" (no .vmctl), "empty" (a .vmctl without an installation) or "set"
    installation: str | None
    record_id: int | None
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiskSnapshot:
    """An internal snapshot of a qcow2 file in a marked VM directory."""

    vm: str  # the directory's name
    file: str
    tag: str


@dataclass(frozen=True)
class Staging:
    entry: str  # NAME.RANDOM
    age_s: int

    @property
    def vm(self) -> str | None:
        """The VM it was made for; None when the entry is not one of vmctl's names."""
        match = STAGING_RE.fullmatch(self.entry)
        return match["vm"] if match else None


@dataclass(frozen=True)
class Host:
    """A DHCP reservation (<host>) of the node's network, in one scope (live or config)."""

    scope: str
    mac: str
    name: str
    ip: str


@dataclass(frozen=True)
class NodeSurvey:
    node: str
    domains: tuple[Domain, ...] = ()
    dirs: tuple[VmDir, ...] = ()
    staging: tuple[Staging, ...] = ()
    hosts: tuple[Host, ...] = ()
    network: str | None = None
    network_state: str | None = None  # "active", "inactive", "absent"; None when not asked
    snapshots: tuple[DiskSnapshot, ...] = ()


def survey_args(storage_dir: str, network: str | None) -> list[str]:
    """The arguments of scripts/survey.sh."""
    args = ["--storage", storage_dir]
    return [*args, "--network", network] if network else args


def _mark(metadata: str) -> Mark | None:
    """vmctl's mark from `virsh metadata NAME URI` output (none when it is empty)."""
    return parse_mark(metadata.strip()) if metadata.strip() else None


def parse_survey(node: str, output: str) -> NodeSurvey:
    """scripts/survey.sh's output; RemoteCommandFailed when it is not a complete survey (the
    node is then not judged at all)."""
    lines = output.splitlines()
    if not lines or lines[0].split("\t") != ["survey", SURVEY_VERSION]:
        raise RemoteCommandFailed(node, "survey.sh", 0, "not a survey (version 1) on stdout")
    if lines[-1] != "end":
        raise RemoteCommandFailed(node, "survey.sh", 0, "the survey output is incomplete")
    domains, dirs, staging, hosts, snapshots = [], [], [], [], []
    network = network_state = None
    for line in lines[1:-1]:
        kind, *f = line.split("\t")
        if kind == "domain" and len(f) == 3:
            domains.append(Domain(f[0], f[1], _mark(f[2])))
        elif kind == "dir" and len(f) == 5:
            record_id = int(f[3]) if f[3].isdigit() else None
            files = tuple(sorted(x for x in f[4].split("/") if x))
            dirs.append(VmDir(f[0], f[1], f[2] or None, record_id, files))
        elif kind == "snapshot" and len(f) == 3:
            snapshots.append(DiskSnapshot(f[0], f[1], f[2]))
        elif kind == "staging" and len(f) == 2:
            staging.append(Staging(f[0], int(f[1]) if f[1].lstrip("-").isdigit() else 0))
        elif kind == "network" and len(f) == 2:
            network, network_state = f[0], f[1]
        elif kind == "host" and len(f) == 4:
            hosts.append(Host(f[0], f[1].lower(), f[2], f[3]))
        else:
            raise RemoteCommandFailed(node, "survey.sh", 0, f"cannot read the line {line!r}")
    return NodeSurvey(
        node,
        tuple(domains),
        tuple(dirs),
        tuple(staging),
        tuple(hosts),
        network,
        network_state,
        tuple(snapshots),
    )


# -- commands that repair (run by the adapter; pure builders, tested as data) -------------------


def remove_staging_command(storage_dir: str, entry: str) -> list[str]:
    """Remove one staging directory; only names vmctl gives them (NAME.8 hex digits)."""
    if not STAGING_RE.fullmatch(entry):
        raise ValueError(f"{entry!r} is not the name of a vmctl staging directory")
    return ["rm", "-rf", "--", f"{storage_dir}/.staging/{entry}"]


_UNRESERVE = """set -eu
net=$1 mac=$2 ip=$3
v() { virsh -q -c qemu:///system "$@"; }
info=$(v net-info --network "$net")
for scope in live config; do
  case $scope in
    live) [[ $info =~ Active:[[:space:]]+yes ]] || continue ;;
    config) [[ $info =~ Persistent:[[:space:]]+yes ]] || continue ;;
  esac
  opt=; [[ $scope == config ]] && opt=--inactive
  if v net-dumpxml --network "$net" $opt | grep -F "<host " | grep -F "'$mac'" |
      grep -qF "'$ip'"; then
    v net-update --network "$net" --command delete --section ip-dhcp-host \\
      --xml "<host mac='$mac' ip='$ip'/>" "--$scope" >/dev/null
    echo "deleted <host mac='$mac' ip='$ip'/> from $net ($scope)" >&2
  fi
done
"""


def unreserve_command(network: str, mac: str, ip: str) -> list[str]:
    """Delete the DHCP reservation of ``mac`` and ``ip`` (both must match) from ``network``'s
    running state and persistent definition."""
    if not MAC_RE.fullmatch(mac.lower()):
        raise ValueError(f"{mac!r} is not a MAC address")
    IPv4Address(ip)  # ValueError if it is not an address
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", network):
        raise ValueError(f"{network!r} is not a network name")
    return ["bash", "-c", _UNRESERVE, "unreserve", network, mac.lower(), ip]


# -- drift -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    kind: str
    node: str | None
    vm: str | None  # the VM it concerns (its lock is held while it is repaired)
    subject: str  # what differs: a domain, a path, a reservation, a cache key, a row
    detail: str
    fix: str | None = None  # what `--fix` does about it; None: only reported
    data: Mapping[str, str] = field(default_factory=dict)  # what the repair needs

    @property
    def info(self) -> bool:
        """Information only (``foreign``): not drift."""
        return self.kind == FOREIGN

    @property
    def key(self) -> tuple[str, str | None, str]:
        """The same drift in two passes has the same key (the watcher records it once)."""
        return (self.kind, self.node, self.subject)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = dict(self.data)
        d["fixable"] = self.fix is not None
        return d


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
) -> list[Drift]:
    """Every difference between PostgreSQL (``rows``), the nodes surveyed and Redis
    (``cache_keys``: key -> the node it names), plus ``foreign`` information.

    ``locked_free``: the ``creating``/``deleting`` rows whose lock was free (no process works on
    them: they are stuck). ``pools``: each node's vmctl address range (managed networks);
    ``storage``: each node's storage directory (for messages); ``snapshots``: the snapshot
    names PostgreSQL records, of the VMs whose snapshots are to be compared. Rows on nodes not
    surveyed are not judged."""
    rows = list(rows)
    pools = pools or {}
    storage = storage or {}
    by_name = {r.name: r for r in rows}
    drift: list[Drift] = []
    for s in surveys:
        drift += _compare_node(s, rows, installation, locked_free, pools.get(s.node), storage)
        drift += _compare_snapshots(s, rows, installation, snapshots or {})
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
        drift.append(
            Drift(STALE_CACHE, node, name, key, reason, "forget the key", {"names": node or ""})
        )
    return drift


def _compare_node(
    s: NodeSurvey,
    rows: list[VmRecord],
    installation: str,
    locked_free: Collection[str],
    pool: AddressPool | None,
    storage: Mapping[str, str],
) -> list[Drift]:
    node = s.node
    where = storage.get(node, "the storage directory")
    here = {r.name: r for r in rows if r.node == node}
    domains = {d.name: d for d in s.domains}
    drift: list[Drift] = []

    def add(kind: str, vm: str | None, subject: str, detail: str, fix: str | None = None) -> None:
        drift.append(Drift(kind, node, vm, subject, detail, fix))

    for r in here.values():
        if r.state in ("creating", "deleting"):
            if r.name in locked_free:
                kind = STUCK_CREATING if r.state == "creating" else STUCK_DELETING
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
                ROW_WITHOUT_DOMAIN,
                r.name,
                f"row {r.name}",
                f"recorded {r.state} on {node}, which has no domain {r.name}",
                "record the VM as error (the row is kept)",
            )
        elif dom.mark is not None and dom.mark.installation != installation:
            add(
                ROW_WITHOUT_DOMAIN,
                r.name,
                f"row {r.name}",
                f"domain {r.name} on {node} belongs to installation {dom.mark.installation}",
            )
        elif dom.state in RECORDED_STATE and RECORDED_STATE[dom.state] != r.state:
            want = RECORDED_STATE[dom.state]
            drift.append(
                Drift(
                    WRONG_STATE,
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
                add(FOREIGN, None, f"domain {dom.name}", f"{whose}; left alone")
            continue
        assert dom.mark is not None
        if row is None:
            elsewhere = next((r for r in rows if r.name == dom.name), None)
            note = f" ({dom.name} is recorded on {elsewhere.node})" if elsewhere else ""
            add(
                DOMAIN_WITHOUT_ROW,
                dom.name,
                f"domain {dom.name}",
                f"{dom.state}, marked as row {dom.mark.record_id}, which does not exist here"
                + note,
                "destroy and undefine it, remove its directory",
            )
        elif row.id != dom.mark.record_id and row.state not in ("creating", "deleting"):
            add(
                DOMAIN_WITHOUT_ROW,
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
                add(FOREIGN, None, f"{where}/{d.name}", f"directory with {whose}; left alone")
            continue
        if d.name in here or d.name in domains:
            continue  # the row's, or the domain's (domain-without-row removes it with it)
        drift.append(
            Drift(
                ORPHAN_DIR,
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
            add(FOREIGN, None, f"{where}/.staging/{st.entry}", "not a vmctl name; left alone")
            continue
        row = here.get(vm)
        if row is not None and row.state in ("creating", "deleting"):
            continue  # a create at work, or part of a stuck row (its repair removes it)
        state = f"{vm} is {row.state}" if row else f"no VM {vm} is recorded on {node}"
        drift.append(
            Drift(
                ORPHAN_STAGING,
                node,
                vm,
                f"{where}/.staging/{st.entry}",
                f"{state}; left by a create that died ({st.age_s} s old)",
                "remove it",
                {"entry": st.entry},
            )
        )

    macs = {r.mac.lower() for r in here.values()}
    ips = {ip for r in here.values() for ip in (r.reserved_ip, r.ip) if ip}
    seen: dict[tuple[str, str, str], list[str]] = {}
    for h in s.hosts:
        seen.setdefault((h.mac, h.ip, h.name), []).append(h.scope)
    for (mac, ip, name), scopes in seen.items():
        if mac in macs or ip in ips:
            continue
        if not _in_pool(ip, pool):
            continue  # outside vmctl's range: someone else's
        drift.append(
            Drift(
                ORPHAN_RESERVATION,
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


def _compare_snapshots(
    s: NodeSurvey,
    rows: list[VmRecord],
    installation: str,
    recorded: Mapping[str, Collection[str]],
) -> list[Drift]:
    """The snapshots of each running or stopped VM's disks against its snapshot rows."""
    dirs = {d.name: d for d in s.dirs if d.installation == installation}
    drift: list[Drift] = []
    for r in rows:
        d = dirs.get(r.name)
        if r.node != s.node or r.state not in ("running", "stopped") or d is None:
            continue
        if r.name not in recorded:
            continue
        disks = sorted(f for f in d.files if f.endswith(".qcow2"))
        on_disk: dict[str, set[str]] = {f: set() for f in disks}
        for snap in s.snapshots:
            if snap.vm == r.name:
                on_disk.setdefault(snap.file, set()).add(snap.tag)
        names = set(recorded[r.name])
        for tag in sorted(set().union(*on_disk.values()) - names):
            files = ", ".join(f for f in disks if tag in on_disk[f])
            drift.append(
                Drift(
                    SNAPSHOT_WITHOUT_ROW,
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
                    Drift(
                        ROW_WITHOUT_SNAPSHOT,
                        s.node,
                        r.name,
                        f"snapshot {r.name}/{name}",
                        f"recorded, but missing from {', '.join(missing)}: cannot be reverted to",
                    )
                )
    return drift
