"""The lab's two `vmctl worker`s (durable jobs, docs/architecture.md): started by `up` (this
machine has no systemd), ended by `down`, each with its PID file and log under the lab's
directory. A worker silent for 10 s is taken for dead: the other runs its jobs again."""

from __future__ import annotations

from typing import Any

from . import config
from .procs import Daemon, require_vmctl

COUNT = 2
STALLED_AFTER_S = 10
DAEMONS = [Daemon(f"worker-{i}", config.WORKERS_DIR) for i in range(1, COUNT + 1)]


def argv(daemon: Daemon) -> list[str]:
    return [
        require_vmctl(),
        "worker",
        "--name",
        f"lab-{daemon.name}",
        "--stalled-after",
        str(STALLED_AFTER_S),
    ]


def start(env: dict[str, str]) -> None:
    """Start each worker unless it runs already."""
    for daemon in DAEMONS:
        daemon.start(argv(daemon), env, lambda logged: "msg=working" in logged)


def stop() -> None:
    for daemon in DAEMONS:
        daemon.stop()


def status() -> list[dict[str, Any]]:
    return [
        {
            "name": f"lab-{d.name}",
            "up": d.pid() is not None,
            "pid": d.pid(),
            "log": str(d.log_file),
        }
        for d in DAEMONS
    ]
