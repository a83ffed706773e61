"""The lab's `vmctl watch-ip`: started by `up` (this machine has no systemd), ended by `down`.

It serves its metrics on 127.0.0.1:18469 (`--metrics-listen`, job `vmctl-watch-ip`)."""

from __future__ import annotations

from . import config
from .procs import Daemon, cmdline, require_vmctl

DAEMON = Daemon("watch-ip", config.WATCHER_DIR)
LOG_FILE = DAEMON.log_file
METRICS_OPTION = "--metrics-listen"


def pid() -> int | None:
    return DAEMON.pid()


def metrics_address() -> str:
    return f"127.0.0.1:{config.WATCH_IP_METRICS_PORT}"


def argv() -> list[str]:
    return [require_vmctl(), "watch-ip", METRICS_OPTION, metrics_address()]


def serves_metrics() -> bool:
    """Whether the running watcher was started with --metrics-listen."""
    value = pid()
    return value is not None and METRICS_OPTION in cmdline(value)


def start(env: dict[str, str]) -> None:
    """Start the watcher unless it runs already (needs vmctl installed in .venv), serving its
    metrics; one that runs without them (a lab started before watch-ip had --metrics-listen) is
    restarted."""
    if pid() is not None and not serves_metrics():
        DAEMON.stop()
    DAEMON.start(argv(), env, lambda logged: "msg=watching" in logged)


def stop() -> None:
    DAEMON.stop()
