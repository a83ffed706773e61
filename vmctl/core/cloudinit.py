"""Rendering the NoCloud seed (meta-data, user-data, network-config): pure functions.

jinja2 and email.mime are imported when a seed is rendered, not when this module is imported
(`vmctl list` reaches it through the services and needs neither).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vmctl.core.errors import InvalidInput
from vmctl.core.resources import templates_dir

if TYPE_CHECKING:
    import jinja2


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
    phone_home_url: str | None = None  # cloud-init POSTs here once the guest is up


def _env() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(seed: Seed, extra_user_data: str | None = None) -> dict[str, str]:
    """The seed's files by name, ready to be put on a cidata volume.

    `extra_user_data` (from `--user-data FILE`: a #cloud-config or a #! script) travels as a
    second part of a MIME multi-part user-data, which cloud-init merges after vmctl's own part.
    """
    env = _env()
    values = {
        "hostname": seed.hostname,
        "instance_id": seed.instance_id,
        "user": seed.user,
        "ssh_authorized_keys": seed.ssh_authorized_keys,
        "mac": seed.mac,
        "host_key": seed.host_key,
        "data_disk": seed.data_disk,
        "phone_home_url": seed.phone_home_url,
    }
    files = {
        name: env.get_template(f"{name}.j2").render(values)
        for name in ("meta-data", "user-data", "network-config")
    }
    if extra_user_data is not None:
        files["user-data"] = _multipart(files["user-data"], extra_user_data)
    return files


# How cloud-init merges the user's part into vmctl's: lists are appended (a user's runcmd runs
# after vmctl's, which installs the guest agent), dicts merged, the user's strings win.
MERGE_TYPE = "list(append)+dict(recurse_array)+str()"


def _multipart(ours: str, theirs: str) -> str:
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    if theirs.startswith("#cloud-config"):
        subtype = "cloud-config"
    elif theirs.startswith("#!"):
        subtype = "x-shellscript"
    else:
        raise InvalidInput("user-data", "must start with '#cloud-config' or '#!' (a script)")
    message = MIMEMultipart()
    for text, sub, filename in ((ours, "cloud-config", "vmctl.cfg"), (theirs, subtype, "user")):
        part = MIMEText(text, sub, "utf-8")
        part.add_header("Content-Disposition", "attachment", filename=filename)
        if filename == "user":  # their lists (runcmd, write_files...) add to ours, not replace
            part.add_header("Merge-Type", MERGE_TYPE)
        message.attach(part)
    return message.as_string()
