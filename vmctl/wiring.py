"""Building the real adapters (Fabric, psycopg, redis-py) from settings. Nothing else does."""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vmctl import hostkeys
from vmctl import inventory as inventory_mod
from vmctl.cache import open_cache
from vmctl.errors import ConfigError, Unavailable
from vmctl.hypervisor import Hypervisor
from vmctl.inventory import Node
from vmctl.service import VmService
from vmctl.settings import Settings
from vmctl.ssh import FabricRunner, SshTarget
from vmctl.store import Store
from vmctl.watcher import KIND, Watcher


def progress(message: str) -> None:
    print(f"vmctl: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"vmctl: warning: {message}", file=sys.stderr, flush=True)


def authorized_keys(settings: Settings, extra_files: list[str] | None = None) -> list[str]:
    """Public keys to put into a guest: --ssh-key files, else the configured defaults."""
    files = extra_files or [str(p) for p in settings.authorized_key_files]
    keys: list[str] = []
    for path in files:
        try:
            text = open(path).read().strip()  # noqa: SIM115 - tiny file
        except OSError as exc:
            raise ConfigError(f"ssh-key: cannot read public key {path}: {exc.strerror}") from exc
        if not text.startswith(("ssh-", "ecdsa-", "sk-")):
            raise ConfigError(f"ssh-key: {path} does not hold an OpenSSH public key")
        keys.extend(line for line in text.splitlines() if line.strip())
    return keys


def service(
    settings: Settings,
    quiet: bool = False,
    inventory: inventory_mod.Inventory | None = None,
    tell: Callable[[str], None] | None = None,
    default_keys: Sequence[str] = (),
) -> VmService:
    """The VmService of one command (or of one API worker thread: ``inventory`` loaded once,
    progress to the log)."""
    return VmService(
        inventory=inventory or inventory_mod.load_inventory(settings.inventory),
        store=Store(settings.require_database()),
        cache=open_cache(settings.redis_url, warn),
        connect=connector(settings),
        progress=tell or ((lambda _m: None) if quiet else progress),
        guest_key=settings.ssh_key,
        phone_home_base=settings.api_internal_url,
        default_keys=default_keys,
    )


def api_app(settings: Settings, log: logging.Logger) -> Any:
    """The ASGI app of `vmctl serve`: one VmService per worker thread."""
    from vmctl.api import create_app  # FastAPI is only imported by `serve`

    inventory = inventory_mod.load_inventory(settings.inventory)
    settings.require_database()
    try:
        keys = authorized_keys(settings)
    except ConfigError:
        keys = []  # API callers then have to send SSHKeys
    return create_app(
        lambda: service(settings, inventory=inventory, tell=log.info, default_keys=keys), log
    )


def watcher(
    settings: Settings, log: logging.Logger, sources: Sequence[str], follow: bool = True
) -> Watcher:
    return Watcher(
        inventory=inventory_mod.load_inventory(settings.inventory),
        store=Store(settings.require_database()),
        cache=open_cache(settings.redis_url, log.warning, notice=log.info),
        connect=connector(settings),
        log=log,
        sources=sources,
        process=f"{KIND}@{socket.gethostname()}:{os.getpid()}",
        connect_agent=connector(settings),
        connect_follow=connector(settings),
        follow=follow,
    )


def connector(settings: Settings) -> Callable[[Node], Hypervisor]:
    connections: dict[str, Hypervisor] = {}

    def connect(node: Node) -> Hypervisor:
        """One SSH connection per node for the life of the command."""
        if node.name not in connections:
            connections[node.name] = Hypervisor(
                FabricRunner(
                    SshTarget(
                        node=node.name,
                        host=node.ssh.host,
                        port=node.ssh.port,
                        user=node.ssh.user,
                        key_file=settings.ssh_key,
                        known_hosts=settings.known_hosts,
                    )
                )
            )
        return connections[node.name]

    return connect


def ssh_argv(settings: Settings, svc: VmService, name: str, command: list[str]) -> list[str]:
    """An OpenSSH command line for a VM, checking its host key against the one vmctl made."""
    vm = svc.get(name)
    if not vm.ip:
        raise Unavailable(f"{name} has no known IP address yet (try `vmctl wait {name}`)")
    if not vm.host_key:
        raise Unavailable(f"no host key is recorded for {name}")
    user = svc.inventory.image(vm.image).default_user
    known = Path(tempfile.gettempdir()) / f"vmctl-known_hosts-{os.getuid()}"
    alias = f"vmctl-{name}"
    lines = [
        ln
        for ln in (known.read_text().splitlines() if known.exists() else [])
        if not ln.startswith(f"{alias} ")
    ]
    known.write_text("\n".join([*lines, hostkeys.known_hosts_line(alias, vm.host_key)]) + "\n")
    return [
        "ssh",
        "-i",
        str(settings.ssh_key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        f"HostKeyAlias={alias}",
        f"{user}@{vm.ip}",
        *command,
    ]
