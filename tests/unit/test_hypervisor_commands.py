import pytest

from vmctl.domainxml import GuestSpec
from vmctl.hypervisor import Disks, create_command, delete_command, parse_domifaddr

pytestmark = pytest.mark.unit

SPEC = GuestSpec(
    name="web-1",
    ram_mb=512,
    cpu=1,
    storage_dir="/srv/vms",
    network="vmnet",
    mac="52:54:00:00:00:01",
    image="debian-12",
)


def test_create_command_is_an_argument_list() -> None:
    argv = create_command(SPEC, Disks("/base/debian-12.qcow2", 4, 10), "/srv/vms/.staging/x")
    assert argv == [
        "bash",
        "-s",
        "--",
        "--name",
        "web-1",
        "--base",
        "/base/debian-12.qcow2",
        "--root-gb",
        "4",
        "--data-gb",
        "10",
        "--storage",
        "/srv/vms",
        "--staging",
        "/srv/vms/.staging/x",
    ]
    assert create_command(SPEC, Disks("/b", 4, 0), "/s", start=False)[-1] == "--no-start"


def test_delete_command() -> None:
    assert delete_command("web-1", "/srv/vms") == [
        "bash",
        "-s",
        "--",
        "--name",
        "web-1",
        "--storage",
        "/srv/vms",
    ]


def test_parse_domifaddr() -> None:
    out = (
        " vnet0      52:54:00:38:0b:2e    ipv4         10.213.11.140/24\n"
        " vnet0      52:54:00:38:0b:2e    ipv6         fe80::1/64\n"
    )
    assert parse_domifaddr(out) == [("52:54:00:38:0b:2e", "10.213.11.140")]
    assert parse_domifaddr("") == []
