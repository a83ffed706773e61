"""The one exception tree of vmctl and the exit codes it maps to.

The library core raises these; only the CLI turns them into messages and exit codes.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Every exit code vmctl uses (documented in docs/usage.md)."""

    OK = 0
    ERROR = 1  # an operation failed (remote command, partial batch failure, unexpected error)
    USAGE = 2  # bad input: refused before anything was touched
    NOT_FOUND = 3  # e.g. `vmctl show` of a VM that does not exist
    DRIFT = 4  # `vmctl reconcile`: what nodes, PostgreSQL and Redis hold differs (and stays so)
    CAPACITY = 5  # no node has room
    UNAVAILABLE = 6  # a node, PostgreSQL or another required system cannot be reached
    TIMEOUT = 7
    BUSY = 8  # another operation on the same VM holds its lock (HTTP 409)


class VmctlError(Exception):
    """Base of every error vmctl raises on purpose."""

    exit_status = ExitStatus.ERROR


class ConfigError(VmctlError):
    """Settings or inventory are missing or wrong."""

    exit_status = ExitStatus.USAGE


class InvalidInput(VmctlError):
    """A value given by the user is not acceptable; names the field."""

    exit_status = ExitStatus.USAGE

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(VmctlError):
    """The named thing does not exist."""

    exit_status = ExitStatus.NOT_FOUND


class Conflict(VmctlError):
    """The named thing exists already (bad input: exit 2, HTTP 409)."""

    exit_status = ExitStatus.USAGE


class ImageInUse(Conflict):
    """A base image that VM disks are made from (qcow2 overlays, RBD clones) would be
    overwritten: refused (exit 2), naming where and the VMs that use it."""

    def __init__(self, image: str, message: str, users: dict[str, list[str]]) -> None:
        super().__init__(message)
        self.image = image
        self.users = users  # where (for people) -> the VMs (or images) that use it


class ChecksumMismatch(VmctlError):
    """What a node received is not what was sent (its sha256 differs): removed there."""


class CapacityError(VmctlError):
    """No node has room for the request."""

    exit_status = ExitStatus.CAPACITY


class Unavailable(VmctlError):
    """A system vmctl needs cannot be reached."""

    exit_status = ExitStatus.UNAVAILABLE


class NodeUnreachable(Unavailable):
    """A virtualization node does not answer over SSH."""


class StoreUnavailable(Unavailable):
    """PostgreSQL cannot be reached."""


class Timeout(VmctlError):
    """Waited too long for something to happen."""

    exit_status = ExitStatus.TIMEOUT


class Busy(VmctlError):
    """Another operation on the VM holds its lock, and did not let go within the lock timeout."""

    exit_status = ExitStatus.BUSY


class WrongState(VmctlError):
    """The VM is not in a state that allows this (e.g. resize of a running VM): HTTP 409."""

    exit_status = ExitStatus.USAGE


class GuestFailed(VmctlError):
    """The VM came up but something inside it failed (e.g. cloud-init reported errors)."""


class RemoteCommandFailed(VmctlError):
    """A command run on a node exited non-zero."""

    def __init__(self, node: str, command: str, exit_status: int, stderr: str) -> None:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
        super().__init__(f"on node {node}: `{command}` exited {exit_status}: {detail}")
        self.node = node
        self.command = command
        self.remote_exit_status = exit_status
        self.stderr = stderr


class Forbidden(VmctlError):
    """The caller may not do this (a wrong secret, or a call from the wrong place)."""


class Unauthenticated(VmctlError):
    """No credentials, or credentials that are not valid (HTTP 401)."""
