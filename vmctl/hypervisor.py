"""What vmctl does to a node's libvirt, through a Runner: create, delete, look up addresses.

The command lines are built by pure functions (tested as data); the node scripts travel inside
the command (`bash -c SCRIPT NAME ARGS...`, quoted once), so nodes need nothing installed by vmctl
and always run the manager's version.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from vmctl.addressing import Lease, Neighbor, Observation
from vmctl.domainxml import GuestSpec
from vmctl.domainxml import render as render_domain
from vmctl.errors import RemoteCommandFailed, VmctlError
from vmctl.resources import node_script
from vmctl.ssh import Runner

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
) -> list[str]:
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
    return argv if start else [*argv, "--no-start"]


def delete_args(
    name: str, storage_dir: str, network: str | None = None, mac: str | None = None
) -> list[str]:
    argv = ["--name", name, "--storage", storage_dir]
    if network is not None and mac is not None:
        argv += ["--network", network, "--mac", mac]
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


class Hypervisor:
    """One node's libvirt, reached through a Runner."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def create(
        self,
        spec: GuestSpec,
        disks: Disks,
        seed_files: dict[str, str],
        start: bool = True,
        reservation: Reservation | None = None,
    ) -> None:
        """Upload the domain XML and seed, then run create-vm.sh (which cleans up on failure)."""
        staging = f"{spec.storage_dir}/.staging/{spec.name}.{secrets.token_hex(4)}"
        self.runner.run(["mkdir", "-p", "-m", "0700", staging])
        try:
            self.runner.put(render_domain(spec).encode(), f"{staging}/domain.xml")
            for name, text in seed_files.items():
                self.runner.put(text.encode(), f"{staging}/{name}")
            self.runner.run(
                script_command(
                    "create-vm.sh", create_args(spec, disks, staging, start, reservation)
                )
            )
        finally:  # the script removes it too, except when it refuses its arguments
            with contextlib.suppress(VmctlError):
                self.runner.run(["rm", "-rf", "--", staging], check=False)

    def delete(
        self, name: str, storage_dir: str, network: str | None = None, mac: str | None = None
    ) -> None:
        """Remove the VM (and its DHCP reservation in ``network``, when given)."""
        args = delete_args(name, storage_dir, network, mac)
        self.runner.run(script_command("delete-vm.sh", args))

    def observe(self, network: str, timeout: float = 15.0) -> Observation:
        """The node's DHCP leases in ``network`` and its ARP table, in one command."""
        return parse_observation(self.runner.run(observe_command(network), timeout=timeout).stdout)

    def follow_leases(
        self,
        network: str,
        on_leases: Callable[[list[Lease]], None],
        stop: threading.Event,
    ) -> None:
        """Hand ``network``'s DHCP leases to ``on_leases`` at once and every time the node's DHCP
        server changes them, until ``stop`` (scripts/watch-leases.sh follows libvirt's lease
        file). RemoteCommandFailed with exit status 3: there is no such libvirt network."""

        def on_line(line: str) -> None:
            if line.startswith("leases "):
                on_leases(parse_lease_status(line.removeprefix("leases ")))

        self.runner.stream(script_command("watch-leases.sh", [network]), on_line, stop)

    def domains(self) -> list[str]:
        out = self.runner.run([*VIRSH, "list", "--all", "--name"]).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def addresses(
        self, name: str, source: str = "lease", timeout_s: int | None = None
    ) -> list[tuple[str, str]]:
        """(mac, ipv4) pairs from `virsh domifaddr --source SOURCE`; none if there are none
        or the command fails (no agent, domain not running yet, no answer in ``timeout_s``)."""
        command = domifaddr_command(name, source)
        if timeout_s is not None:  # a guest agent that is not up yet makes virsh wait
            command = ["timeout", str(timeout_s), *command]
        try:
            out = self.runner.run(command).stdout
        except RemoteCommandFailed:
            return []
        return parse_domifaddr(out)

    def console_log(self, name: str, storage_dir: str) -> str:
        path = f"{storage_dir}/{name}/console.log"
        return self.runner.run(["tail", "-c", "4000", path], check=False).stdout
