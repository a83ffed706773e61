import pytest

from vmctl.domainxml import GuestSpec
from vmctl.hypervisor import Disks, create_args, delete_args, parse_domifaddr, script_command

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


def test_create_arguments_are_a_list() -> None:
    argv = create_args(SPEC, Disks("/base/debian-12.qcow2", 4, 10), "/srv/vms/.staging/x")
    assert argv == [
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
    assert create_args(SPEC, Disks("/b", 4, 0), "/s", start=False)[-1] == "--no-start"


def test_delete_arguments() -> None:
    assert delete_args("web-1", "/srv/vms") == ["--name", "web-1", "--storage", "/srv/vms"]


def test_scripts_travel_inside_the_command_quoted_once() -> None:
    import shlex
    import subprocess

    argv = script_command("delete-vm.sh", delete_args("x;reboot", "/srv/vms"))
    assert argv[:2] == ["bash", "-c"] and argv[3] == "delete-vm.sh"
    assert argv[2].startswith("#!/usr/bin/env bash")
    # The node's shell gets one string; run it here: the hostile name stays a value.
    proc = subprocess.run(["sh", "-c", shlex.join(argv)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid --name 'x;reboot'" in proc.stderr


def test_parse_domifaddr() -> None:
    out = (
        " vnet0      52:54:00:38:0b:2e    ipv4         10.213.11.140/24\n"
        " vnet0      52:54:00:38:0b:2e    ipv6         fe80::1/64\n"
    )
    assert parse_domifaddr(out) == [("52:54:00:38:0b:2e", "10.213.11.140")]
    assert parse_domifaddr("") == []
