"""Running commands: argument lists only, progress on stderr."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class LabError(Exception):
    """Something the lab needs failed; the message says what."""


def log(message: str) -> None:
    sys.stderr.write(f"lab: {message}\n")  # one write: threads log too
    sys.stderr.flush()


def run(
    args: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(args), input=input, capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError as exc:
        raise LabError(f"{args[0]} is not installed (run lab/setup-host.sh)") from exc
    if check and proc.returncode != 0:
        output = proc.stderr.strip() or proc.stdout.strip()
        raise LabError(f"`{' '.join(args)}` exited {proc.returncode}: {output}")
    return proc


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path``'s content at once: a reader (another test run, an SSH client reading
    known_hosts) sees the old file or the new one, never a half-written one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def ok(args: Sequence[str]) -> bool:
    return run(args, check=False).returncode == 0


def wait_for(
    what: str, predicate: Callable[[], bool], timeout: float, interval: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def listening(host: str, port: int) -> bool:
    """True if something accepts TCP connections at ``host``:``port`` (a port taken)."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def gone(pid: int) -> bool:
    """True once the process has exited and been reaped (no zombie left in /proc)."""
    return not os.path.exists(f"/proc/{pid}")


def wait_gone(pids: list[int], timeout: float = 15) -> None:
    wait_for(f"processes {pids} to be reaped", lambda: all(gone(p) for p in pids), timeout)
