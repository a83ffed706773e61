"""The lab's `vmctl watch-ip`: started by `up` (this machine has no systemd), ended by `down`.

It serves its metrics on 127.0.0.1:18469 (`--metrics-listen`, job `vmctl-watch-ip`) when the
installed vmctl has that option."""

from __future__ import annotations

import subprocess
from pathlib import Path

from . import config
from .procs import Daemon, require_vmctl

DAEMON = Daemon("watch-ip", config.WATCHER_DIR)
LOG_FILE = DAEMON.log_file
METRICS_OPTION = "--metrics-listen"


def pid() -> int | None:
    return DAEMON.pid()


def metrics_address() -> str:
    return f"127.0.0.1:{config.WATCH_IP_METRICS_PORT}"


def metrics_supported() -> bool:
    """Whether the installed `vmctl watch-ip` has --metrics-listen (asked of its --help)."""
    proc = subprocess.run(
        [require_vmctl(), "watch-ip", "--help"], capture_output=True, text=True, timeout=60
    )
    return proc.returncode == 0 and METRICS_OPTION in proc.stdout


def argv(metrics: bool) -> list[str]:
    extra = [METRICS_OPTION, metrics_address()] if metrics else []
    return [require_vmctl(), "watch-ip", *extra]


def _cmdline(value: int) -> list[str]:
    try:
        return Path(f"/proc/{value}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def serves_metrics() -> bool:
    """Whether the running watcher was started with --metrics-listen."""
    value = pid()
    return value is not None and METRICS_OPTION in _cmdline(value)


def start(env: dict[str, str], metrics: bool = True) -> None:
    """Start the watcher unless it runs already (needs vmctl installed in .venv), serving its
    metrics (tests that restart it get the lab's watcher back, metrics and all); one that runs
    without the metrics it should serve (started before vmctl had --metrics-listen) is
    restarted."""
    if pid() is not None and metrics and not serves_metrics():
        DAEMON.stop()
    DAEMON.start(argv(metrics), env, lambda logged: "msg=watching" in logged)


def stop() -> None:
    DAEMON.stop()
