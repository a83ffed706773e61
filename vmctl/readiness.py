"""Waiting until a new VM is usable: its address is known and SSH answers with its host key."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import paramiko

from vmctl import hostkeys
from vmctl.errors import Timeout
from vmctl.hypervisor import Hypervisor


def ssh_host_key(ip: str, port: int = 22, timeout: float = 5.0) -> str | None:
    """The server's host key as "TYPE BASE64", or None if SSH does not answer (yet)."""
    try:
        sock = socket.create_connection((ip, port), timeout=timeout)
    except OSError:
        return None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"
    except (paramiko.SSHException, OSError, EOFError):
        return None
    finally:
        transport.close()


def wait_for_ip(
    hv: Hypervisor, name: str, mac: str, deadline: float, sources: tuple[str, ...] = ("lease",)
) -> str | None:
    while time.monotonic() < deadline:
        for source in sources:
            for found_mac, ip in hv.addresses(name, source):
                if found_mac == mac:
                    return ip
        time.sleep(1)
    return None


def wait_for_ssh(ip: str, expected_key: str, deadline: float) -> bool:
    """True once SSH at ip presents exactly the host key vmctl put into the seed."""
    want = hostkeys.key_blob(expected_key)
    while time.monotonic() < deadline:
        if ssh_host_key(ip) == want:
            return True
        time.sleep(1)
    return False


def wait_ready(
    hv: Hypervisor,
    name: str,
    mac: str,
    host_key: str,
    timeout: float,
    on_ip: Callable[[str], None],
    console_log: str,
) -> str:
    """Wait for the DHCP lease, then for SSH; returns the IP. Timeout names the step stuck at."""
    deadline = time.monotonic() + timeout
    ip = wait_for_ip(hv, name, mac, deadline)
    if ip is None:
        raise Timeout(
            f"{name}: no IP address after {timeout:.0f} s (no DHCP lease for {mac}); "
            f"see the console log on node {hv.runner.node}: {console_log}"
        )
    on_ip(ip)
    if not wait_for_ssh(ip, host_key, deadline):
        raise Timeout(
            f"{name}: got {ip} but SSH did not answer with its host key within {timeout:.0f} s; "
            f"see the console log on node {hv.runner.node}: {console_log}"
        )
    return ip
