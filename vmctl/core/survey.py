"""What a node holds, as `vmctl reconcile` sees it: ``NodeSurvey`` (parsed from the output of
scripts/survey.sh, whose arguments ``survey_args`` builds), vmctl's mark read from a domain's
metadata, and the commands that repair a node outside a VM's delete (a staging directory, a DHCP
reservation).

Only what carries this installation's mark is vmctl's: a domain whose metadata names our
installation, a VM directory whose ``.vmctl`` file does. Two things carry no mark and are
vmctl's by where they are: staging directories (``STORAGE/.staging/NAME.RANDOM``, a directory only
vmctl writes to) and DHCP reservations inside the network's vmctl address range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from vmctl.core.domainxml import parse_mark
from vmctl.core.errors import RemoteCommandFailed
from vmctl.core.records import Mark
from vmctl.core.storage import parse_rbd_image

STAGING_RE = re.compile(r"(?P<vm>[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?)\.[0-9a-f]{8}")
MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
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
class PoolImage:
    """An image of shared storage named as vmctl names VM images (vmctl.VM.KIND)."""

    name: str
    vm: str
    kind: str  # root, data or seed
    installation: str | None  # from its vmctl.mark; None: no mark
    record_id: int | None
    snapshots: tuple[str, ...] = ()


def parse_image_mark(mark: str) -> tuple[str | None, int | None]:
    """ "installation=UUID id=N" -> (UUID, N); missing parts are None."""
    fields = dict(part.partition("=")[::2] for part in mark.split())
    record = fields.get("id", "")
    return fields.get("installation") or None, int(record) if record.isdigit() else None


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
    images: tuple[PoolImage, ...] = ()  # of shared storage, when this node listed them


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
    images: dict[str, PoolImage] = {}
    image_snaps: dict[str, list[str]] = {}
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
        elif kind == "image" and len(f) == 2 and (named := parse_rbd_image(f[0])):
            installation, record_id = parse_image_mark(f[1])
            images[f[0]] = PoolImage(f[0], named[0], named[1], installation, record_id)
        elif kind == "rbdsnap" and len(f) == 2:
            image_snaps.setdefault(f[0], []).append(f[1])
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
        tuple(
            replace(image, snapshots=tuple(image_snaps.get(name, ())))
            for name, image in sorted(images.items())
        ),
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
