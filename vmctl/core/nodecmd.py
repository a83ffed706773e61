"""The commands vmctl runs on a node, built as argument lists, and parsers of what they print:
pure functions, tested as data. Scripts from scripts/ travel inside the command (`bash -c SCRIPT
NAME ARGS...`, quoted once), so nodes need nothing installed by vmctl."""

from __future__ import annotations

import ipaddress
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from vmctl.core.addressing import Lease, Neighbor, Observation
from vmctl.core.domainxml import GuestSpec
from vmctl.core.resources import node_script


def describe(argv: Sequence[str]) -> str:
    """A command as messages name it: a script sent as `bash -c TEXT NAME ARGS...` by its name
    and arguments, not by its whole text."""
    if len(argv) >= 4 and argv[0] == "bash" and argv[1] == "-c" and "\n" in argv[2]:
        return shlex.join(argv[3:])
    return shlex.join(argv)


VIRSH = ["virsh", "-q", "-c", "qemu:///system"]


@dataclass(frozen=True)
class Disks:
    base_image: str
    root_gb: int
    data_gb: int


@dataclass(frozen=True)
class Reservation:
    """A fixed address for a MAC in a libvirt network's DHCP (managed networks)."""

    network: str
    mac: str
    ip: str


def script_command(script: str, args: list[str]) -> list[str]:
    """Run one of scripts/ on a node: its text is the command, never a file left on the node."""
    return ["bash", "-c", node_script(script), script, *args]


def create_args(
    spec: GuestSpec,
    disks: Disks,
    staging: str,
    start: bool = True,
    reservation: Reservation | None = None,
    unpack: bool = False,
) -> list[str]:
    """create-vm.sh's arguments; ``unpack``: the staged files come on its standard input (a tar
    archive), into ``staging`` (which the script makes)."""
    argv = [
        "--name",
        spec.name,
        "--base",
        disks.base_image,
        "--root-gb",
        str(disks.root_gb),
        "--data-gb",
        str(disks.data_gb),
        "--storage",
        spec.storage_dir,
        "--staging",
        staging,
    ]
    if reservation is not None:
        argv += ["--network", reservation.network, "--mac", reservation.mac]
        argv += ["--ip", reservation.ip]
    if spec.mark is not None:
        argv += ["--installation", spec.mark.installation, "--record-id", str(spec.mark.record_id)]
    if unpack:
        argv.append("--unpack-stdin")
    return argv if start else [*argv, "--no-start"]


def staged_archive(files: dict[str, str]) -> bytes:
    """The staged files (name -> text) as an uncompressed tar archive, each mode 0600."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def delete_args(
    name: str,
    storage_dir: str,
    network: str | None = None,
    mac: str | None = None,
    installation: str | None = None,
) -> list[str]:
    argv = ["--name", name, "--storage", storage_dir]
    if network is not None and mac is not None:
        argv += ["--network", network, "--mac", mac]
    if installation is not None:
        argv += ["--installation", installation]
    return argv


# One command shows a node's DHCP leases of one network and its IPv4 ARP table.
_OBSERVE = (
    'virsh -q -c qemu:///system net-dhcp-leases "$1" 2>/dev/null || true; '
    "echo '--- neighbors'; ip -4 neigh show"
)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def observe_command(network: str) -> list[str]:
    return ["bash", "-c", _OBSERVE, "observe", network]


def parse_observation(output: str) -> Observation:
    """Leases (`virsh -q net-dhcp-leases`) and neighbours (`ip -4 neigh show`) from
    ``observe_command``'s output; lines that do not parse are skipped."""
    leases_text, _, neigh_text = output.partition("--- neighbors")
    leases = []
    for line in leases_text.splitlines():
        # 2026-11-25 12:00:00  52:54:00:aa:bb:cc  ipv4  10.0.0.5/24  host  client-id
        fields = line.split()
        if len(fields) >= 5 and fields[3] == "ipv4" and _is_ipv4(fields[4].split("/")[0]):
            leases.append(Lease(fields[2], fields[4].split("/")[0], f"{fields[0]} {fields[1]}"))
    neighbors = []
    for line in neigh_text.splitlines():
        # 10.0.0.5 dev vmbr0 lladdr 52:54:00:aa:bb:cc REACHABLE
        fields = line.split()
        if fields and _is_ipv4(fields[0]) and "lladdr" in fields[:-1]:
            mac = fields[fields.index("lladdr") + 1]
            neighbors.append(Neighbor(mac, fields[0], fields[-1]))
    return Observation(tuple(leases), tuple(neighbors))


def parse_lease_status(text: str) -> list[Lease]:
    """IPv4 leases from libvirt's lease status file (JSON: a list of objects with "mac-address",
    "ip-address" and "expiry-time" in seconds since the epoch); entries that do not parse are
    skipped, and text that is not such a list holds none."""
    try:
        entries = json.loads(text) if text.strip() else []
    except ValueError:
        return []
    leases = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        mac, ip = entry.get("mac-address"), entry.get("ip-address")
        expiry = entry.get("expiry-time")
        if isinstance(mac, str) and isinstance(ip, str) and _is_ipv4(ip):
            when = ""
            if isinstance(expiry, int) and 0 <= expiry < 2**37:
                when = datetime.fromtimestamp(expiry, UTC).strftime("%Y-%m-%d %H:%M:%S")
            leases.append(Lease(mac, ip, when))
    return leases


def domifaddr_command(name: str, source: str = "lease") -> list[str]:
    return [*VIRSH, "domifaddr", name, "--source", source]


def parse_domifaddr(output: str) -> list[tuple[str, str]]:
    """(mac, ipv4) pairs from `virsh -q domifaddr` output."""
    pairs = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "ipv4":
            pairs.append((fields[1], fields[3].split("/")[0]))
    return pairs


# vCPUs and RAM of a shut-off domain's persistent definition. The maximum goes first when it
# grows and last when it shrinks, so the current count never exceeds it.
_SET_RESOURCES = """set -eu
v() { virsh -q -c qemu:///system "$@"; }
name=$1 cpu=$2 ram=$3
if [ "$cpu" -ge "$(v vcpucount "$name" --config --maximum)" ]; then
  v setvcpus "$name" "$cpu" --config --maximum; v setvcpus "$name" "$cpu" --config
else
  v setvcpus "$name" "$cpu" --config; v setvcpus "$name" "$cpu" --config --maximum
fi
v setmaxmem "$name" "${ram}M" --config
v setmem "$name" "${ram}M" --config
"""


def set_resources_command(name: str, cpu: int, ram_mb: int) -> list[str]:
    return ["bash", "-c", _SET_RESOURCES, "set-resources", name, str(cpu), str(ram_mb)]


def grow_disk_command(path: str, size_gb: int) -> list[str]:
    """qemu-img refuses to shrink without --shrink: a smaller size fails, never loses data."""
    return ["qemu-img", "resize", "-q", "-f", "qcow2", path, f"{size_gb}G"]
