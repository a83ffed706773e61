"""The lab's network: a bridge in the root namespace, one namespace per node, routes to guests.

Nothing here forwards or NATs towards the outside: the root namespace's forwarding setting is never
touched, and nodes get no default route, so guest packets can reach only lab addresses.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from . import config
from .config import LabHost
from .sh import LabError, log, ok, run


def _ip_json(*args: str) -> list[dict[str, object]]:
    out = run(["ip", "-j", *args]).stdout.strip()
    return json.loads(out) if out else []


def check_no_collision() -> None:
    """Refuse to start if the lab's /16 overlaps an address or route already on this machine."""
    lab = config.lab_network()
    ours = {config.BRIDGE} | {n for n in links() if n.startswith(config.NETNS_PREFIX)}
    for link in _ip_json("addr", "show"):
        if link.get("ifname") in ours:
            continue
        for info in link.get("addr_info", []):  # type: ignore[union-attr]
            if info.get("family") != "inet":
                continue
            net = ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
            if net.overlaps(lab):
                raise LabError(
                    f"address {info['local']}/{info['prefixlen']} on {link['ifname']} overlaps the "
                    f"lab's {lab}; choose another range with VMCTL_LAB_PREFIX (e.g. 10.214)"
                )
    for route in _ip_json("route", "show", "table", "all"):
        dst = str(route.get("dst", ""))
        if route.get("dev") in ours or dst in ("default", "") or ":" in dst:
            continue
        try:
            net = ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False)
        except ValueError:
            continue
        if net.overlaps(lab) and not _is_lab_route(route):
            raise LabError(
                f"route {dst} via {route.get('dev')} overlaps the lab's {lab}; "
                "choose another range with VMCTL_LAB_PREFIX"
            )


def _is_lab_route(route: dict[str, object]) -> bool:
    gw = str(route.get("gateway", ""))
    return route.get("dev") == config.BRIDGE or gw.startswith(f"{config.PREFIX}.0.")


def links() -> list[str]:
    return [str(link["ifname"]) for link in _ip_json("link", "show")]


def netns_list() -> list[str]:
    return [str(ns["name"]) for ns in _ip_json("netns", "list")]


def ensure_bridge() -> None:
    if config.BRIDGE not in links():
        log(f"creating bridge {config.BRIDGE} ({config.bridge_address()}/24)")
        run(["ip", "link", "add", config.BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{config.bridge_address()}/24", "dev", config.BRIDGE])
    run(["ip", "link", "set", config.BRIDGE, "up"])


def ensure_node_network(node: LabHost) -> None:
    if node.netns not in netns_list():
        log(f"{node.name}: namespace {node.netns}, address {node.address}")
        run(["ip", "netns", "add", node.netns])
    if node.veth not in links():
        run(
            [
                "ip",
                "link",
                "add",
                node.veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                node.netns,
            ]
        )
        run(["ip", "link", "set", node.veth, "master", config.BRIDGE, "up"])
        run(["ip", "-n", node.netns, "addr", "add", f"{node.address}/24", "dev", "eth0"])
        run(["ip", "-n", node.netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", node.netns, "link", "set", "lo", "up"])
    # The node routes between its guests and the lab bridge; it has no default route.
    run(["ip", "netns", "exec", node.netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    run(["ip", "route", "replace", node.guest_subnet, "via", node.address, "dev", config.BRIDGE])


def clear_guest_links(netns: str, only: str | None = None) -> None:
    """Remove what a host's libvirt left in its namespace when it ended without tearing its
    networks down (killed, or the lab interrupted): the guest bridge and the guests' taps. Its next
    libvirtd starts with a fresh /run, so it no longer knows the network is up, and would refuse
    to start it ("Network is already in use by interface vmbr0"). A rebooted real host has none
    of these either. Only for a namespace where nothing runs (or, with ``only``, for a link that
    nothing running uses)."""
    for link in _ip_json("-n", netns, "link", "show"):
        name = str(link["ifname"])
        if name not in ("lo", "eth0") and only in (None, name):
            log(f"{netns}: removing {name}, left by a libvirtd that is gone")
            ok(["ip", "-n", netns, "link", "del", name])


def remove_node_network(node_netns: str, guest_subnet: str | None) -> None:
    if guest_subnet:
        ok(["ip", "route", "del", guest_subnet])
    if node_netns in netns_list():
        run(["ip", "netns", "del", node_netns])


def remove_bridge() -> None:
    if config.BRIDGE in links():
        run(["ip", "link", "del", config.BRIDGE])


def lab_netns() -> list[str]:
    return [ns for ns in netns_list() if ns.startswith(config.NETNS_PREFIX)]


def release_netns_mount(before_mounts: list[str]) -> None:
    """`ip netns add` mounts /run/netns on first use; undo that if it was not there before."""
    if netns_list() or any(m.startswith("/run/netns ") for m in before_mounts):
        return
    while "/run/netns" in (line.split()[1] for line in mount_points()):
        run(["umount", "/run/netns"])


def mount_points() -> list[str]:
    """Lines of /proc/self/mounts (device, mount point, type, ...)."""
    return Path("/proc/self/mounts").read_text().splitlines()
