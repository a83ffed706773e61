"""Waiting until a new VM is usable, step by step: its address is confirmed (by `vmctl watch-ip`,
announced on Redis, recorded in PostgreSQL), SSH answers with the host key vmctl made, and
cloud-init reports that it has finished."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from vmctl import hostkeys
from vmctl.cache import Cache, Subscription, SubscriptionLost
from vmctl.errors import InvalidInput, StoreUnavailable, Unavailable
from vmctl.store import Store, VmRecord

STEPS = ("ip", "ssh", "cloud-init")  # --wait-for: each includes the ones before it


def check_step(step: str) -> str:
    if step not in STEPS:
        raise InvalidInput("wait-for", f"must be one of {', '.join(STEPS)}, not {step!r}")
    return step


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


def wait_for_address(
    store: Store,
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


def wait_for_ssh(ip: str, expected_key: str, deadline: float) -> bool:
    """True once SSH at ip presents exactly the host key vmctl put into the seed."""
    want = hostkeys.key_blob(expected_key)
    while time.monotonic() < deadline:
        if ssh_host_key(ip) == want:
            return True
        time.sleep(1)
    return False


@dataclass(frozen=True)
class CloudInit:
    status: str  # "done", "degraded" (finished with recoverable errors) or "error"
    detail: str


def wait_for_cloud_init(
    ip: str, user: str, key_file: Path, host_key: str, deadline: float
) -> CloudInit | None:
    """Log in (host key pinned to the one vmctl made) and run `cloud-init status --wait`.

    None at ``deadline``; Unavailable if the key is refused (vmctl cannot ask)."""
    key_type, blob = hostkeys.key_blob(host_key).split()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.get_host_keys().add(
            ip, key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
        )
        try:
            client.connect(
                ip,
                username=user,
                key_filename=str(key_file),
                look_for_keys=False,
                allow_agent=False,
                timeout=min(10.0, remaining),
                banner_timeout=min(10.0, remaining),
                auth_timeout=min(10.0, remaining),
            )
            _, stdout, _ = client.exec_command(
                "cloud-init status --wait --long", timeout=max(1.0, remaining)
            )
            out = stdout.read().decode(errors="replace")
            code = stdout.channel.recv_exit_status()
        except paramiko.AuthenticationException as exc:
            raise Unavailable(
                f"cannot log into {user}@{ip} with {key_file} to ask cloud-init whether it has "
                "finished (wait with --wait-for ssh, or put that key into the VM)"
            ) from exc
        except (paramiko.SSHException, OSError, EOFError):
            time.sleep(1)  # sshd restarting, or the command timed out: try again
            continue
        finally:
            client.close()
        if code == 0:
            return CloudInit("done", out.strip())
        if code == 2:
            return CloudInit("degraded", out.strip())
        if code == 1 and "status: error" in out:
            return CloudInit("error", out.strip())
        time.sleep(1)  # e.g. killed before it finished: ask again


def stuck(name: str, step: str, timeout: float, node: str, console_log: str, what: str) -> str:
    """The message of a Timeout: the step, what was missing, where to look."""
    return (
        f"{name}: stuck at step '{step}' after {timeout:.0f} s: {what}; "
        f"see the console log on node {node}: {console_log}"
    )
