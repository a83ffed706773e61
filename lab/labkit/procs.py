"""Long-running processes the lab starts itself (this machine has no systemd): the watcher, the
API replicas, HAProxy. Each has a PID file and a log file in its directory; `stop` ends it by
that PID only."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import config
from .sh import LabError, alive, log, wait_for, wait_gone

VMCTL = config.REPO / ".venv" / "bin" / "vmctl"  # lab/setup-host.sh installs it


def cmdline(pid: int) -> list[str]:
    """The command line process ``pid`` runs ([] once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def require_vmctl() -> str:
    if not VMCTL.exists():
        raise LabError(f"{VMCTL} is missing: run lab/setup-host.sh first")
    return str(VMCTL)


def run_vmctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`vmctl ARGS` with the lab's settings ``env``; LabError with its stderr if it fails."""
    proc = subprocess.run(
        [require_vmctl(), *args], env={**os.environ, **env}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise LabError(f"vmctl {' '.join(args)}: {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class Daemon:
    name: str
    directory: Path

    @property
    def pid_file(self) -> Path:
        return self.directory / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            value = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return value if alive(value) else None

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def start(
        self,
        argv: list[str],
        env: dict[str, str],
        ready: Callable[[str], bool],
        timeout: float = 30,
    ) -> None:
        """Start it unless it runs already; wait until ``ready(what it logged since)``."""
        if self.pid() is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        offset = len(self.log_text())
        # Detached: the daemon's parent is a shell that exits at once, so the daemon is nobody's
        # child here (PID 1 reaps it) and any process can stop it and see it gone.
        detach = 'exec "$@" </dev/null >>"$VMCTL_LAB_LOG" 2>&1 & echo $!'
        launched = subprocess.run(
            ["setsid", "sh", "-c", detach, "sh", *argv],
            env={**os.environ, **env, "VMCTL_LAB_LOG": str(self.log_file)},
            capture_output=True,
            text=True,
            cwd="/",
        )
        if launched.returncode != 0 or not launched.stdout.strip().isdigit():
            raise LabError(f"{self.name} did not start: {launched.stderr.strip()}")
        pid = int(launched.stdout.strip())
        self.pid_file.write_text(f"{pid}\n")

        def up() -> bool:
            if not alive(pid):
                tail = self.log_text()[offset:][-2000:]
                raise LabError(f"{self.name} exited: {tail}")
            return ready(self.log_text()[offset:])

        wait_for(self.name, up, timeout=timeout)
        log(f"{self.name}: running (pid {pid}, log {self.log_file})")

    def stop(self) -> None:
        value = self.pid()
        if value is None:
            self.pid_file.unlink(missing_ok=True)
            return
        log(f"{self.name}: stopping (pid {value})")
        os.kill(value, signal.SIGTERM)
        try:
            wait_gone([value], timeout=30)
        except LabError:
            os.kill(value, signal.SIGKILL)
            wait_gone([value])
        self.pid_file.unlink(missing_ok=True)
