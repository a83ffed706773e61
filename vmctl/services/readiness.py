"""Waiting until a new VM is usable, step by step: its address is confirmed (by `vmctl watch-ip`,
announced on Redis, recorded in PostgreSQL), SSH answers with the host key vmctl made, and
cloud-init reports that it has finished. The guest is asked through the GuestProbe port."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from vmctl.core import hostkeys
from vmctl.core.errors import StoreUnavailable
from vmctl.core.records import VmRecord
from vmctl.services.ports import (
    Cache,
    CloudInit,
    GuestProbe,
    Subscription,
    SubscriptionLost,
    VmReader,
)

PAUSE_S = 1.0  # between two tries at cloud-init (each one waits inside the guest until it ends)
SSH_PAUSE_S = 0.2  # between two looks at SSH: a guest without sshd yet refuses at once (cheap)


def wait_for_address(
    store: VmReader,
    cache: Cache,
    name: str,
    deadline: float,
    look: Callable[[], None] | None = None,
    progress: Callable[[str], None] = lambda _m: None,
    poll_s: float = 0.5,
) -> VmRecord | None:
    """Until PostgreSQL holds a confirmed address for ``name``; None at ``deadline``.

    Woken by the watcher's announcements on Redis; without Redis, PostgreSQL is read every
    ``poll_s``. ``look`` (when no watcher runs) looks for the address itself between reads.
    NotFound if the VM is deleted meanwhile; a PostgreSQL outage is waited out.
    """
    subscription: Subscription | None = cache.subscribe_ip()
    store_down = False
    try:
        while True:
            try:
                vm = store.get(name)
                store_down = False
            except StoreUnavailable as exc:
                if not store_down:
                    progress(f"{name}: {exc}; waiting for it")
                store_down = True
                vm = None
            if vm is not None and vm.ip_state == "confirmed":
                return vm
            if vm is not None and look is not None:
                look()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if subscription is not None:
                try:
                    subscription.get(timeout=min(1.0, remaining))
                    continue
                except SubscriptionLost:
                    subscription.close()
                    subscription = None
            time.sleep(min(poll_s, remaining))
    finally:
        if subscription is not None:
            subscription.close()


def wait_for_ssh(
    probe: GuestProbe, ip: str, expected_key: str, deadline: float, pause_s: float = SSH_PAUSE_S
) -> bool:
    """True once SSH at ip presents exactly the host key vmctl put into the seed."""
    want = hostkeys.key_blob(expected_key)
    while time.monotonic() < deadline:
        if probe.host_key(ip) == want:
            return True
        time.sleep(pause_s)
    return False


def wait_for_cloud_init(
    probe: GuestProbe,
    ip: str,
    user: str,
    key_file: Path,
    host_key: str,
    deadline: float,
    pause_s: float = PAUSE_S,
) -> CloudInit | None:
    """Until cloud-init says it has finished (done, degraded or error); None at ``deadline``;
    Unavailable (from the probe) if the key is refused."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        result = probe.cloud_init(ip, user, key_file, host_key, remaining)
        if result is not None:
            return result
        time.sleep(pause_s)
