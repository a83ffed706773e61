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
from vmctl.cache import Cache, NullCache, RedisCache
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


def make_cache(settings: Settings) -> Cache:
    return RedisCache(settings.redis_url, warn=warn) if settings.redis_url else NullCache()


def service(settings: Settings, quiet: bool = False) -> VmService:
    return VmService(
        inventory=inventory_mod.load_inventory(settings.inventory),
        store=Store(settings.require_database()),
        cache=make_cache(settings),
        connect=connector(settings),
        progress=(lambda _m: None) if quiet else progress,
        guest_key=settings.ssh_key,
        phone_home_base=settings.api_internal_url,
    )


def api_app(settings: Settings, log: logging.Logger) -> Any:
    """The ASGI app of `vmctl serve`: one VmService per worker thread."""
    from vmctl.api import create_app  # FastAPI is only imported by `serve`

    inventory = inventory_mod.load_inventory(settings.inventory)
    database_url = settings.require_database()
    try:
        keys = authorized_keys(settings)
    except ConfigError:
        keys = []  # API callers then have to send SSHKeys

    def make_service() -> VmService:
        return VmService(
            inventory=inventory,
            store=Store(database_url),
            cache=make_cache(settings),
            connect=connector(settings),
            progress=lambda message: log.info(message),
            guest_key=settings.ssh_key,
            phone_home_base=settings.api_internal_url,
            default_keys=keys,
        )

    return create_app(make_service, log)


def watcher(settings: Settings, log: logging.Logger, sources: Sequence[str]) -> Watcher:
    def to_log(level: int) -> Callable[[str], None]:
        return lambda message: log.log(level, message)

    cache: Cache = NullCache()
    if settings.redis_url:
        cache = RedisCache(
            settings.redis_url, warn=to_log(logging.WARNING), notice=to_log(logging.INFO)
        )
    return Watcher(
        inventory=inventory_mod.load_inventory(settings.inventory),
        store=Store(settings.require_database()),
        cache=cache,
        connect=connector(settings),
        log=log,
        sources=sources,
        process=f"{KIND}@{socket.gethostname()}:{os.getpid()}",
        connect_agent=connector(settings),
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
