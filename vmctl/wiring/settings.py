"""Settings: flag > VMCTL_* environment > config file > defaults.

The config file is TOML (`$VMCTL_CONFIG`, else `~/.config/vmctl/config.toml`) with the same keys
as the fields below, e.g. `database_url = "postgresql://..."`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from vmctl.core.errors import ConfigError

HOME = Path.home()


@dataclass(frozen=True)
class Settings:
    inventory: Path = Path("inventory.yaml")
    database_url: str | None = None
    redis_url: str | None = None
    ssh_key: Path = HOME / ".ssh" / "id_ed25519"  # reaches the nodes
    known_hosts: Path = HOME / ".ssh" / "known_hosts"  # node host keys; guests' are added here
    guest_ssh_keys: tuple[Path, ...] = ()  # public keys put into guests; default: ssh_key + .pub
    api_internal_url: str | None = None  # where guests phone home (the internal HAProxy)
    lock_timeout: float = 30.0  # seconds an operation waits while another holds the VM
    create_per_node: int = 4  # creates whose node work (disks, seed, start) runs at once per node
    # (under `vmctl worker`: across every worker, docs/architecture.md "Durable jobs")
    queue: bool = False  # `create`/`delete` queue a job for `vmctl worker` and wait for it
    worker_concurrency: int = 4  # jobs one `vmctl worker` runs at once
    job_queue: str = "vmctl"  # the queue jobs go to and workers take them from
    job_keep_hours: int = 168  # a job done longer ago than this is forgotten (by the workers)
    # seconds a call rides out a lost PostgreSQL (a failover) before it is an outage; unset: 30
    # for a URL with several hosts (host=a,b), 0 (report at once) for one host
    failover_timeout: float | None = None

    @property
    def authorized_key_files(self) -> tuple[Path, ...]:
        return self.guest_ssh_keys or (Path(f"{self.ssh_key}.pub"),)

    def require_database(self) -> str:
        if not self.database_url:
            raise ConfigError(
                "no PostgreSQL URL: set VMCTL_DATABASE_URL, database_url in the config file, "
                "or --database-url"
            )
        return self.database_url


def _ranged(value: object, kind: Callable[[str], float], low: float, high: float) -> float | None:
    """``value`` as ``kind`` (int or float) if it is one within [low, high]; else None."""
    try:
        number = kind(str(value))
    except ValueError:
        return None
    return number if low <= number <= high else None


def _convert(name: str, value: object, source: str) -> object:
    if name in ("inventory", "ssh_key", "known_hosts"):
        return Path(os.path.expanduser(str(value)))
    if name == "guest_ssh_keys":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{source}: guest_ssh_keys must be a list of paths")
        return tuple(Path(os.path.expanduser(str(i).strip())) for i in items if str(i).strip())
    if name == "lock_timeout":
        seconds = _ranged(value, float, 0, 86400)
        if seconds is None or seconds == 86400:
            raise ConfigError(f"{source}: lock_timeout must be seconds (0 or more), not {value!r}")
        return seconds
    if name == "queue":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ConfigError(f"{source}: queue must be true or false, not {value!r}")
        return text in ("1", "true", "yes", "on")
    if name == "failover_timeout":
        seconds = _ranged(value, float, 0, 3600)
        if seconds is None:
            raise ConfigError(f"{source}: failover_timeout must be seconds (0-3600), not {value!r}")
        return seconds
    if name == "job_keep_hours":
        hours = _ranged(value, int, 1, 87600)
        if hours is None:
            raise ConfigError(f"{source}: job_keep_hours must be hours (1-87600), not {value!r}")
        return hours
    if name in ("create_per_node", "worker_concurrency"):
        count = _ranged(value, int, 1, 64)
        if count is None:
            raise ConfigError(f"{source}: {name} must be a number 1-64, not {value!r}")
        return count
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {name} must be a string")
    return value


def load(
    flags: Mapping[str, object | None] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    env = os.environ if environ is None else environ
    path = config_file or Path(
        env.get("VMCTL_CONFIG", str(HOME / ".config" / "vmctl" / "config.toml"))
    )
    names = {f.name for f in fields(Settings)}
    values: dict[str, object] = {}
    if path.exists():
        import tomllib  # ~5 ms of regexes: only when there is a config file

        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})"
            )
        values.update({k: _convert(k, v, str(path)) for k, v in data.items()})
    for name in names:
        if f"VMCTL_{name.upper()}" in env:
            values[name] = _convert(name, env[f"VMCTL_{name.upper()}"], f"VMCTL_{name.upper()}")
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _convert(name, value, f"--{name.replace('_', '-')}")
    return Settings(**values)  # type: ignore[arg-type]
