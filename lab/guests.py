"""Booting guests on lab nodes directly through vmctl's node layer (no database): the demo and
the lab's own tests use this. Run with the project's virtualenv (it imports vmctl)."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from vmctl.adapters.hypervisor import LibvirtOverSsh
from vmctl.adapters.ssh import FabricRunner, SshTarget
from vmctl.adapters.storage import LocalStorage, storage_for
from vmctl.core import cloudinit, hostkeys
from vmctl.core.domainxml import GuestSpec
from vmctl.core.nodecmd import Disks

LAB = Path(__file__).resolve().parent / "lab"
STORAGE = "/var/lib/libvirt/images/vmctl"
BASE_IMAGE = "/var/lib/libvirt/images/base/debian-12.qcow2"


def status() -> dict:  # type: ignore[type-arg]
    return json.loads(
        subprocess.run([str(LAB), "status", "--json"], capture_output=True, text=True).stdout
    )


def hypervisor(node: dict, lab: dict, storage: str = "files") -> LibvirtOverSsh:  # type: ignore[type-arg]
    """The node's libvirt over SSH. ``storage``: "files" (the lab's own guests: qcow2 files in
    STORAGE on every node) or "inventory" (where vmctl keeps VM disks on that node)."""
    target = SshTarget(
        node=node["name"],
        host=node["address"],
        port=node["ssh_port"],
        user=node["ssh_user"],
        key_file=Path(lab["ssh"]["key"]),
        known_hosts=Path(lab["ssh"]["known_hosts"]),
    )
    if storage == "inventory":
        from vmctl.core.inventory import load_inventory

        inventory = load_inventory(Path(lab["inventory"]))
        return LibvirtOverSsh(FabricRunner(target), storage_for(inventory.node(node["name"])))
    return LibvirtOverSsh(FabricRunner(target), LocalStorage(STORAGE))


@dataclass
class Guest:
    name: str
    node: dict  # type: ignore[type-arg]
    mac: str
    known_hosts_line: str
    hv: LibvirtOverSsh
    ram_mb: int
    cpu: int
    data_gb: int
    ip: str | None = None
    started_at: float = 0.0


def boot(
    lab: dict,
    node: dict,
    name: str,
    ram_mb: int = 384,
    cpu: int = 1,  # type: ignore[type-arg]
    root_gb: int = 4,
    data_gb: int = 1,
) -> Guest:
    """Create and start a guest: overlay of the base image, data disk, NoCloud seed."""
    pub = Path(lab["ssh"]["key"] + ".pub").read_text().strip()
    host_key = hostkeys.new_host_key(name)
    mac = hostkeys.new_mac()
    seed = cloudinit.Seed(
        hostname=name,
        instance_id=f"{name}-{uuid.uuid4().hex[:8]}",
        user=lab["image"]["default_user"],
        ssh_authorized_keys=[pub],
        mac=mac,
        host_key=host_key,
    )
    spec = GuestSpec(
        name=name,
        ram_mb=ram_mb,
        cpu=cpu,
        storage_dir=STORAGE,
        network=node["guest_network"],
        mac=mac,
        image=lab["image"]["name"],
        virt_type="qemu",
    )
    hv = hypervisor(node, lab)
    started = time.monotonic()
    hv.create(spec, Disks(BASE_IMAGE, root_gb, data_gb), cloudinit.render(seed))
    return Guest(
        name,
        node,
        mac,
        hostkeys.known_hosts_line(name, host_key.public),
        hv,
        ram_mb,
        cpu,
        data_gb,
        started_at=started,
    )


def wait_ip(guest: Guest, timeout: float = 240) -> str:
    """The guest's address from its node's DHCP leases."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for mac, ip in guest.hv.addresses(guest.name, "lease"):
            if mac == guest.mac:
                guest.ip = ip
                return ip
        time.sleep(1)
    raise TimeoutError(
        f"{guest.name}: no DHCP lease after {timeout:.0f} s\n"
        + guest.hv.console_log(guest.name, 4000)
    )


def ssh_options(key: str, known_hosts: Path | str) -> list[str]:
    """OpenSSH options for lab logins: key only, no prompts, host keys always checked."""
    return [
        "-i",
        key,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "ConnectTimeout=5",
    ]


def ssh_command(guest: Guest, lab: dict, known_hosts: Path, *command: str) -> list[str]:  # type: ignore[type-arg]
    assert guest.ip, "wait_ip first"
    return [
        "ssh",
        *ssh_options(lab["ssh"]["key"], known_hosts),
        "-o",
        f"HostKeyAlias={guest.name}",
        f"{lab['image']['default_user']}@{guest.ip}",
        *command,
    ]


def wait_ssh(guest: Guest, lab: dict, known_hosts: Path, timeout: float = 240) -> float:  # type: ignore[type-arg]
    """Wait until the guest accepts the injected key; returns seconds since boot()."""
    with known_hosts.open("a") as f:
        f.write(guest.known_hosts_line + "\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if guest.ip is None:
            wait_ip(guest, timeout=max(1, deadline - time.monotonic()))
        proc = subprocess.run(
            ssh_command(guest, lab, known_hosts, "true"), capture_output=True, text=True, timeout=30
        )
        if proc.returncode == 0:
            return time.monotonic() - guest.started_at
        time.sleep(1)
    raise TimeoutError(
        f"{guest.name}: no SSH login after {timeout:.0f} s\n"
        + guest.hv.console_log(guest.name, 4000)
    )


def delete(guest: Guest) -> None:
    guest.hv.delete(guest.name)


def dhcp_exchange(hv: LibvirtOverSsh, node: dict, mac: str, network: str = "vmnet") -> str | None:  # type: ignore[type-arg]
    """One DHCP exchange as a guest with ``mac`` on ``network``'s bridge would make it: busybox's
    udhcpc in a namespace of its own, its veth on the bridge in the node's namespace; the address
    dnsmasq leased (None if none within ~5 s). The client leaves without releasing the lease;
    the namespace and the veth go."""
    info = hv.runner.run(["virsh", "-q", "net-info", network]).stdout
    found = re.search(r"Bridge:\s+(\S+)", info)
    assert found, info
    tag = secrets.token_hex(3)
    ns, here, there = f"vmlab-dhcp-{tag}", f"vd{tag}a", f"vd{tag}b"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    ip("netns", "add", ns)
    try:
        ip(
            "-n",
            node["netns"],
            "link",
            "add",
            here,
            "type",
            "veth",
            "peer",
            "name",
            there,
            "netns",
            ns,
        )
        ip("-n", node["netns"], "link", "set", here, "master", found.group(1), "up")
        ip("-n", ns, "link", "set", there, "address", mac, "up")
        client = ["busybox", "udhcpc", "-i", there, "-f", "-q", "-n", "-t", "5", "-T", "1"]
        done = subprocess.run(
            ["ip", "netns", "exec", ns, *client, "-s", "/bin/true"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        leased = re.search(r"lease of (\S+) obtained", done.stdout + done.stderr)
        return leased.group(1) if leased else None
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)  # its veth pair goes with it
