"""Rendering the NoCloud seed (meta-data, user-data, network-config): pure functions."""

from __future__ import annotations

from dataclasses import dataclass, field

import jinja2

from vmctl.resources import templates_dir


@dataclass(frozen=True)
class HostKey:
    """An SSH host key pair for the guest, in OpenSSH format."""

    private: str
    public: str


@dataclass(frozen=True)
class DataDisk:
    device: str = "/dev/vdb"
    mountpoint: str = "/dataxfs"


@dataclass(frozen=True)
class Seed:
    hostname: str
    instance_id: str
    user: str
    ssh_authorized_keys: list[str]
    mac: str
    host_key: HostKey | None = None
    data_disk: DataDisk | None = field(default_factory=DataDisk)


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(seed: Seed) -> dict[str, str]:
    """The seed's files by name, ready to be put on a cidata volume."""
    env = _env()
    values = {
        "hostname": seed.hostname,
        "instance_id": seed.instance_id,
        "user": seed.user,
        "ssh_authorized_keys": seed.ssh_authorized_keys,
        "mac": seed.mac,
        "host_key": seed.host_key,
        "data_disk": seed.data_disk,
    }
    return {
        name: env.get_template(f"{name}.j2").render(values)
        for name in ("meta-data", "user-data", "network-config")
    }
