"""What vmctl does to a node's libvirt, through a Runner: create, delete, look up addresses.

The command lines are built by pure functions (tested as data); the node scripts travel inside
the command (`bash -c SCRIPT NAME ARGS...`, quoted once), so nodes need nothing installed by vmctl
and always run the manager's version.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass

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


def script_command(script: str, args: list[str]) -> list[str]:
    """Run one of scripts/ on a node: its text is the command, never a file left on the node."""
    return ["bash", "-c", node_script(script), script, *args]


def create_args(spec: GuestSpec, disks: Disks, staging: str, start: bool = True) -> list[str]:
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
    return argv if start else [*argv, "--no-start"]


def delete_args(name: str, storage_dir: str) -> list[str]:
    return ["--name", name, "--storage", storage_dir]


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
        self, spec: GuestSpec, disks: Disks, seed_files: dict[str, str], start: bool = True
    ) -> None:
        """Upload the domain XML and seed, then run create-vm.sh (which cleans up on failure)."""
        staging = f"{spec.storage_dir}/.staging/{spec.name}.{secrets.token_hex(4)}"
        self.runner.run(["mkdir", "-p", "-m", "0700", staging])
        try:
            self.runner.put(render_domain(spec).encode(), f"{staging}/domain.xml")
            for name, text in seed_files.items():
                self.runner.put(text.encode(), f"{staging}/{name}")
            self.runner.run(
                script_command("create-vm.sh", create_args(spec, disks, staging, start))
            )
        finally:  # the script removes it too, except when it refuses its arguments
            with contextlib.suppress(VmctlError):
                self.runner.run(["rm", "-rf", "--", staging], check=False)

    def delete(self, name: str, storage_dir: str) -> None:
        self.runner.run(script_command("delete-vm.sh", delete_args(name, storage_dir)))

    def domains(self) -> list[str]:
        out = self.runner.run([*VIRSH, "list", "--all", "--name"]).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def addresses(self, name: str, source: str = "lease") -> list[tuple[str, str]]:
        try:
            out = self.runner.run(domifaddr_command(name, source)).stdout
        except RemoteCommandFailed:
            return []  # no agent, domain not running yet, ...
        return parse_domifaddr(out)

    def console_log(self, name: str, storage_dir: str) -> str:
        path = f"{storage_dir}/{name}/console.log"
        return self.runner.run(["tail", "-c", "4000", path], check=False).stdout
