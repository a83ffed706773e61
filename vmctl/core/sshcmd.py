"""The OpenSSH command line of `vmctl ssh`: a pure function, the VM's host key pinned."""

from __future__ import annotations

from pathlib import Path

from vmctl.core import hostkeys


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
        "-i",
        str(key_file),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
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
        "-i",
        str(key_file),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
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
