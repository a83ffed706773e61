"""The composition root: the real adapters (Fabric, paramiko, psycopg, redis-py) built from
settings and handed to the services. Nothing else names an adapter class."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence

from vmctl.core import validation
from vmctl.core.errors import ConfigError, InvalidInput
from vmctl.core.inventory import Inventory, Node, load_inventory
from vmctl.services import Services
from vmctl.services.ports import Hypervisor, Store
from vmctl.services.tokens import TokenService
from vmctl.services.vms import VmService
from vmctl.services.watcher import KIND, Watcher
from vmctl.wiring.settings import Settings


def progress(message: str) -> None:
    print(f"vmctl: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"vmctl: warning: {message}", file=sys.stderr, flush=True)


def authorized_keys(settings: Settings, extra_files: Sequence[str] | None = None) -> list[str]:
    """Public keys to put into a guest: --ssh-key files, else the configured defaults."""
    files = list(extra_files or [str(p) for p in settings.authorized_key_files])
    keys: list[str] = []
    for path in files:
        try:
            text = open(path).read()  # noqa: SIM115 - tiny file
        except OSError as exc:
            raise ConfigError(f"ssh-key: cannot read public key {path}: {exc.strerror}") from exc
        try:
            keys += validation.public_keys([ln for ln in text.splitlines() if ln.strip()])
        except InvalidInput as exc:
            raise InvalidInput("ssh-key", f"{path} does not hold OpenSSH public keys") from exc
    return keys


def store(settings: Settings, max_size: int | None = None) -> Store:
    """psycopg is imported only by commands that reach PostgreSQL."""
    from vmctl.adapters.store import MAX_SIZE, PgStore

    return PgStore(settings.require_database(), max_size=max_size or MAX_SIZE)


def vm_service(
    settings: Settings,
    quiet: bool = False,
    inventory: Inventory | None = None,
    tell: Callable[[str], None] | None = None,
    default_keys: Sequence[str] = (),
    shared_store: Store | None = None,
) -> VmService:
    """The VmService of one command (or of one API worker thread: ``inventory`` loaded once,
    one store, with its pool of connections, shared by every thread; progress to the log)."""
    from vmctl.adapters.cache import open_cache
    from vmctl.adapters.guest import SshGuestProbe

    return VmService(
        inventory=inventory or load_inventory(settings.inventory),
        store=shared_store or store(settings),
        cache=open_cache(settings.redis_url, warn),
        connect=connector(settings),
        probe=SshGuestProbe(),
        progress=tell or ((lambda _m: None) if quiet else progress),
        guest_key=settings.ssh_key,
        phone_home_base=settings.api_internal_url,
        default_keys=default_keys,
    )


def services(
    settings: Settings,
    inventory: Inventory | None = None,
    tell: Callable[[str], None] | None = None,
    default_keys: Sequence[str] = (),
    shared_store: Store | None = None,
) -> Services:
    vms = vm_service(
        settings, inventory=inventory, tell=tell, default_keys=default_keys, shared_store=shared_store
    )
    return Services(vms=vms, tokens=TokenService(vms.store))


def upgrade_database(settings: Settings) -> list[str]:
    """Apply pending schema migrations (yoyo); the ids applied."""
    from vmctl.adapters import db

    return db.upgrade(settings.require_database())


def token_service(settings: Settings) -> TokenService:
    return TokenService(store(settings))


def watcher(
    settings: Settings, log: logging.Logger, sources: Sequence[str], follow: bool = True
) -> Watcher:
    from vmctl.adapters.cache import open_cache

    return Watcher(
        inventory=load_inventory(settings.inventory),
        store=store(settings),
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
    """Fabric is imported only when a node is first reached."""
    connections: dict[str, Hypervisor] = {}

    def connect(node: Node) -> Hypervisor:
        """One SSH connection per node for the life of the command."""
        from vmctl.adapters.hypervisor import LibvirtOverSsh
        from vmctl.adapters.ssh import FabricRunner, SshTarget

        if node.name not in connections:
            target = SshTarget(
                node=node.name,
                host=node.ssh.host,
                port=node.ssh.port,
                user=node.ssh.user,
                key_file=settings.ssh_key,
                known_hosts=settings.known_hosts,
            )
            connections[node.name] = LibvirtOverSsh(FabricRunner(target))
        return connections[node.name]

    return connect
