"""The lab's `vmctl watch-ip`: started by `up` (this machine has no systemd), ended by `down`."""

from __future__ import annotations

from . import config
from .procs import Daemon, require_vmctl

DAEMON = Daemon("watch-ip", config.WATCHER_DIR)
LOG_FILE = DAEMON.log_file


def pid() -> int | None:
    return DAEMON.pid()


def start(env: dict[str, str]) -> None:
    """Start the watcher unless it runs already (needs vmctl installed in .venv)."""
    DAEMON.start([require_vmctl(), "watch-ip"], env, lambda logged: "msg=watching" in logged)


def stop() -> None:
    DAEMON.stop()
