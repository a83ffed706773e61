"""The composition root: the real adapters (Fabric, paramiko, psycopg, redis-py) built from
settings and handed to the services. Nothing else names an adapter class."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar, cast

from vmctl.core import validation
from vmctl.core.errors import ConfigError, InvalidInput
from vmctl.core.logfields import fields
from vmctl.services import Services
from vmctl.services.jobs import JobService
from vmctl.services.ports import Cache, GuestProbe, Hypervisor, JobQueue, Store
from vmctl.services.tokens import TokenService
from vmctl.services.vms import VmService
from vmctl.wiring.settings import Settings

if TYPE_CHECKING:
    from vmctl.core.inventory import Inventory, Node
    from vmctl.services.images import ImageService
    from vmctl.services.ports import Runner
    from vmctl.services.ports.storage import Storage
    from vmctl.services.watcher import Watcher

T = TypeVar("T")


def lazy(make: Callable[[], T]) -> T:
    """What ``make`` makes, made when one of its attributes is first asked for: a command
    imports only the adapters (and reads only the files) it uses, so `vmctl list` loads neither
    Redis, paramiko nor the inventory."""
    return cast(T, _Lazy(make))


class _Lazy:
    def __init__(self, make: Callable[[], object]) -> None:
        self._make = make
        self._made: object | None = None
        self._lock = threading.Lock()  # `create --count` asks from several threads at once

    def __getattr__(self, name: str) -> object:
        if self._made is None:
            with self._lock:
                if self._made is None:
                    self._made = self._make()
        return getattr(self._made, name)


def load_inventory(settings: Settings) -> Inventory:
    """pydantic and yaml are imported only by commands that read the inventory."""
    from vmctl.core.inventory import load_inventory as load

    return load(settings.inventory)


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

    return PgStore(
        settings.require_database(),
        max_size=max_size or MAX_SIZE,
        failover_s=settings.failover_timeout,
    )


def vm_service(
    settings: Settings,
    quiet: bool = False,
    inventory: Inventory | None = None,
    tell: Callable[[str], None] | None = None,
    default_keys: Sequence[str] = (),
    shared_store: Store | None = None,
    lock_timeout: float | None = None,
    log: logging.Logger | None = None,
) -> VmService:
    """The VmService of one command (or of one API worker thread: ``inventory`` loaded once,
    one store, with its pool of connections, shared by every thread; progress to the log)."""

    def cache() -> Cache:
        from vmctl.adapters.cache import open_cache

        return open_cache(settings.redis_url, warn)

    def probe() -> GuestProbe:
        from vmctl.adapters.guest import SshGuestProbe

        return SshGuestProbe()

    return VmService(
        inventory=inventory or lazy(lambda: load_inventory(settings)),
        store=shared_store or store(settings),
        cache=lazy(cache),
        connect=connector(settings),
        probe=lazy(probe),
        progress=tell or ((lambda _m: None) if quiet else progress),
        guest_key=settings.ssh_key,
        phone_home_base=settings.api_internal_url,
        default_keys=default_keys,
        lock_timeout=settings.lock_timeout if lock_timeout is None else lock_timeout,
        log=log or logging.getLogger("vmctl"),
        storage_of=_storage_of,
        per_node=settings.create_per_node,
    )


def _storage_of(node: Node) -> Storage:
    from vmctl.adapters.storage import storage_for

    return storage_for(node)


def services(
    settings: Settings,
    inventory: Inventory | None = None,
    tell: Callable[[str], None] | None = None,
    default_keys: Sequence[str] = (),
    shared_store: Store | None = None,
    log: logging.Logger | None = None,
    shared_queue: JobQueue | None = None,
) -> Services:
    vms = vm_service(
        settings,
        inventory=inventory,
        tell=tell,
        default_keys=default_keys,
        shared_store=shared_store,
        log=log,
    )
    return Services(
        vms=vms,
        tokens=TokenService(vms.store),
        jobs=job_service(settings, vms, shared_queue),
        use_queue=settings.queue,
    )


def job_queue(settings: Settings) -> JobQueue:
    """Jobs queued in PostgreSQL (procrastinate's pool is opened when the first is queued)."""
    from vmctl.adapters.jobs import PgJobQueue

    return PgJobQueue(settings.require_database(), settings.job_queue)


def job_service(settings: Settings, vms: VmService, queue: JobQueue | None = None) -> JobService:
    return JobService(queue=queue or job_queue(settings), vms=vms)


def run_worker(
    settings: Settings, log: logging.Logger, name: str, concurrency: int, stalled_after: float
) -> None:
    """`vmctl worker`: run queued jobs until stopped. Its creates take a node slot across every
    worker (``create_per_node`` at once on one node)."""
    from dataclasses import replace

    from vmctl.adapters.jobs import run_worker as run
    from vmctl.services.jobs import shared_node_slot

    vms = vm_service(settings, tell=log.info, log=log)
    vms = replace(vms, slot_of=shared_node_slot(vms.store, settings.create_per_node))
    jobs = job_service(settings, vms)
    run(
        settings.require_database(),
        jobs.run,
        name=name,
        queue=settings.job_queue,
        concurrency=concurrency,
        stalled_after=stalled_after,
        log=log,
        keep_hours=settings.job_keep_hours,
    )


def upgrade_database(settings: Settings) -> list[str]:
    """Apply pending schema migrations (yoyo); the ids applied."""
    from vmctl.adapters import db

    return db.upgrade(settings.require_database())


def token_service(settings: Settings) -> TokenService:
    return TokenService(store(settings))


def watcher(
    settings: Settings,
    log: logging.Logger,
    sources: Sequence[str],
    follow: bool = True,
    metrics_at: tuple[str, int] | None = None,
    share: bool = False,
) -> Watcher:
    """The watcher; with ``metrics_at`` (host, port), its metrics served there; with ``share``,
    watching the nodes it holds in its division with the other watchers sharing them."""
    from vmctl.adapters.cache import open_cache
    from vmctl.adapters.node_shares import PgNodeShares
    from vmctl.services.watcher import KIND, Watcher

    inventory = load_inventory(settings)
    metrics = None
    if metrics_at is not None:
        from vmctl.adapters.metrics import process_registry, watch

        registry = process_registry()
        metrics = watch.PrometheusWatchMetrics(registry, [n.name for n in inventory.nodes])
        host, port = watch.serve(*metrics_at, registry)
        log.info("metrics", extra=fields(url=f"http://{host}:{port}/metrics"))
    return Watcher(
        inventory=inventory,
        store=store(settings),
        cache=open_cache(settings.redis_url, log.warning, notice=log.info),
        connect=connector(settings),
        log=log,
        sources=sources,
        process=f"{KIND}@{socket.gethostname()}:{os.getpid()}",
        connect_agent=connector(settings),
        connect_follow=connector(settings),
        follow=follow,
        metrics=metrics,
        shares=PgNodeShares(settings.require_database()) if share else None,
    )


def connector(settings: Settings) -> Callable[[Node], Hypervisor]:
    """Fabric is imported only when a node is first reached."""
    connections: dict[str, Hypervisor] = {}
    lock = threading.Lock()

    def connect(node: Node) -> Hypervisor:
        """One SSH connection per node for the life of the command (its commands, from several
        threads, run as channels of that one connection)."""
        with lock:
            return _connect(node)

    def _connect(node: Node) -> Hypervisor:
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
            connections[node.name] = LibvirtOverSsh.of(node, FabricRunner(target))
        return connections[node.name]

    return connect


def image_service(settings: Settings, quiet: bool = False) -> ImageService:
    """`vmctl images`: the inventory, PostgreSQL, and an SSH runner per node (Fabric is
    imported when a node is first reached)."""
    from vmctl.services.images import ImageService

    runners: dict[str, Runner] = {}

    def runner_for(node: Node) -> Runner:
        from vmctl.adapters.ssh import FabricRunner, SshTarget

        if node.name not in runners:
            target = SshTarget(
                node=node.name,
                host=node.ssh.host,
                port=node.ssh.port,
                user=node.ssh.user,
                key_file=settings.ssh_key,
                known_hosts=settings.known_hosts,
            )
            runners[node.name] = FabricRunner(target)
        return runners[node.name]

    return ImageService(
        inventory=lazy(lambda: load_inventory(settings)),
        store=store(settings),
        runner_for=runner_for,
        progress=(lambda _m: None) if quiet else progress,
        lock_timeout=settings.lock_timeout,
    )
