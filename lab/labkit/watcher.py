"""The lab's `vmctl watch-ip`: started by `up` (this machine has no systemd), ended by `down`.

It runs from the project's virtualenv with the lab's settings, logs to WATCHER_DIR/watch-ip.log
and keeps its PID in WATCHER_DIR/watch-ip.pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from . import config
from .sh import LabError, alive, log, wait_for, wait_gone

PID_FILE = config.WATCHER_DIR / "watch-ip.pid"
LOG_FILE = config.WATCHER_DIR / "watch-ip.log"
VMCTL = config.REPO / ".venv" / "bin" / "vmctl"


def pid() -> int | None:
    try:
        value = int(PID_FILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return value if alive(value) else None


def start(env: dict[str, str]) -> None:
    """Start the watcher unless it runs already (needs vmctl installed in .venv)."""
    if pid() is not None:
        return
    if not VMCTL.exists():
        raise LabError(f"{VMCTL} is missing: run lab/setup-host.sh first")
    config.WATCHER_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_FILE, "ab") as logfile:
        proc = subprocess.Popen(
            [str(VMCTL), "watch-ip"],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=logfile,
            start_new_session=True,
            cwd="/",
        )
    PID_FILE.write_text(f"{proc.pid}\n")
    wait_for("watch-ip to start", lambda: b"msg=watching" in _log_bytes(), timeout=30)
    log(f"watch-ip: running (pid {proc.pid}, log {LOG_FILE})")


def _log_bytes() -> bytes:
    try:
        return Path(LOG_FILE).read_bytes()
    except OSError:
        return b""


def stop() -> None:
    value = pid()
    if value is None:
        return
    log(f"watch-ip: stopping (pid {value})")
    os.kill(value, signal.SIGTERM)
    try:
        wait_gone([value], timeout=30)
    except LabError:
        os.kill(value, signal.SIGKILL)
        wait_gone([value])
    PID_FILE.unlink(missing_ok=True)
