"""The OpenSSH command lines of `vmctl ssh` (the VM's host key pinned) and `vmctl console`
(through the node): pure functions."""

from __future__ import annotations

from pathlib import Path

from vmctl.core import hostkeys


def _key_only(key_file: Path) -> list[str]:
    """Log in with this key alone, and never accept a host key that is not known."""
    return ["-i", str(key_file), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes"]


def ssh_argv(
    key_file: Path, name: str, user: str, ip: str, host_key: str, command: list[str]
) -> list[str]:
    """Log into ``user@ip`` accepting only ``host_key``. The key reaches ssh through
    KnownHostsCommand (an echo of one known_hosts line): no known_hosts file is written, so no
    other local user can plant or read one, and nothing is left behind."""
    alias = f"vmctl-{name}"
    line = hostkeys.known_hosts_line(alias, host_key)
    return [
        "ssh",
        *_key_only(key_file),
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        f"KnownHostsCommand=/bin/echo {line}",
        "-o",
        f"HostKeyAlias={alias}",
        f"{user}@{ip}",
        *command,
    ]


def console_argv(
    key_file: Path, known_hosts: Path, user: str, host: str, port: int, domain: str
) -> list[str]:
    """An interactive `virsh console` of ``domain`` on its node (a terminal is allocated; the
    node's host key must be in ``known_hosts``, as for every other command vmctl runs there).
    Ctrl+] leaves it."""
    return [
        "ssh",
        "-t",
        *_key_only(key_file),
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-p",
        str(port),
        f"{user}@{host}",
        "virsh",
        "-c",
        "qemu:///system",
        "console",
        domain,
    ]
