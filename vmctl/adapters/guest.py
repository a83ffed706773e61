"""Asking a guest over SSH (paramiko), its host key pinned to the one vmctl made: the GuestProbe."""

from __future__ import annotations

import base64
import logging
import socket
from pathlib import Path

import paramiko

from vmctl.core import hostkeys
from vmctl.core.errors import Unavailable
from vmctl.services.ports import CloudInit

# A probe of a guest whose sshd is still starting ends in paramiko's transport thread logging the
# broken banner read with a traceback; with no handler anywhere, Python's last-resort handler put
# it on the operator's stderr. The probe's answer (None: not yet) is all that matters.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class SshGuestProbe:
    def host_key(self, ip: str, port: int = 22, timeout: float = 5.0) -> str | None:
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

    def cloud_init(
        self, ip: str, user: str, key_file: Path, host_key: str, timeout: float
    ) -> CloudInit | None:
        """One login running `cloud-init status --wait --long`."""
        key_type, blob = hostkeys.key_blob(host_key).split()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.get_host_keys().add(
            ip, key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
        )
        step = min(10.0, timeout)
        try:
            client.connect(
                ip,
                username=user,
                key_filename=str(key_file),
                look_for_keys=False,
                allow_agent=False,
                timeout=step,
                banner_timeout=step,
                auth_timeout=step,
            )
            _, stdout, _ = client.exec_command(
                "cloud-init status --wait --long", timeout=max(1.0, timeout)
            )
            out = stdout.read().decode(errors="replace")
            code = stdout.channel.recv_exit_status()
        except paramiko.AuthenticationException as exc:
            raise Unavailable(
                f"cannot log into {user}@{ip} with {key_file} to ask cloud-init whether it has "
                "finished (wait with --wait-for ssh, or put that key into the VM)"
            ) from exc
        except (paramiko.SSHException, OSError, EOFError):
            return None  # sshd restarting, or the command timed out
        finally:
            client.close()
        return status_of(code, out)


def status_of(code: int, out: str) -> CloudInit | None:
    """What `cloud-init status --wait --long` said by its exit code; None: ask again."""
    if code == 0:
        return CloudInit("done", out.strip())
    if code == 2:
        return CloudInit("degraded", out.strip())
    if code == 1 and "status: error" in out:
        return CloudInit("error", out.strip())
    return None  # e.g. killed before it finished
