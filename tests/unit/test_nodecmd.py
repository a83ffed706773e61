import pytest

from vmctl.core.addressing import Lease, Neighbor, Observation, address_from
from vmctl.core.domainxml import GuestSpec
from vmctl.core.nodecmd import (
    Disks,
    Reservation,
    create_args,
    delete_args,
    describe,
    observe_command,
    parse_domifaddr,
    parse_lease_status,
    parse_observation,
    script_command,
)

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
    assert "dhcp_hosts() {" in argv[2]  # the helpers of scripts/lib/ travel ahead of the script
    assert argv[2].index("dhcp_hosts() {") < argv[2].index("#!/usr/bin/env bash\n# delete-vm.sh")
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


BASE_ARGS = [
    "--name",
    "web-1",
    "--base",
    "/b",
    "--root-gb",
    "4",
    "--data-gb",
    "0",
    "--storage",
    "/srv/vms",
    "--staging",
    "/s",
]
RESERVATION = Reservation("vmnet", "52:54:00:00:00:01", "10.20.1.7")


def test_create_arguments_with_a_reservation() -> None:
    argv = create_args(SPEC, Disks("/b", 4, 0), "/s", reservation=RESERVATION)
    assert argv == [
        *BASE_ARGS,
        "--network",
        "vmnet",
        "--mac",
        "52:54:00:00:00:01",
        "--ip",
        "10.20.1.7",
    ]


def test_no_start_comes_last_with_or_without_a_reservation() -> None:
    argv = create_args(SPEC, Disks("/b", 4, 0), "/s", start=False, reservation=RESERVATION)
    assert argv == [
        *BASE_ARGS,
        "--network",
        "vmnet",
        "--mac",
        "52:54:00:00:00:01",
        "--ip",
        "10.20.1.7",
        "--no-start",
    ]
    assert create_args(SPEC, Disks("/b", 4, 0), "/s", start=False) == [*BASE_ARGS, "--no-start"]


def test_create_arguments_without_a_reservation_name_no_network() -> None:
    argv = create_args(SPEC, Disks("/b", 4, 0), "/s", reservation=None)
    assert argv == BASE_ARGS
    assert not {"--network", "--mac", "--ip"} & set(argv)


def test_delete_arguments_with_network_and_mac() -> None:
    assert delete_args("web-1", "/srv/vms", "vmnet", "52:54:00:00:00:01") == [
        "--name",
        "web-1",
        "--storage",
        "/srv/vms",
        "--network",
        "vmnet",
        "--mac",
        "52:54:00:00:00:01",
    ]


def test_delete_arguments_need_both_network_and_mac_to_name_either() -> None:
    plain = ["--name", "web-1", "--storage", "/srv/vms"]
    assert delete_args("web-1", "/srv/vms", network="vmnet") == plain
    assert delete_args("web-1", "/srv/vms", mac="52:54:00:00:00:01") == plain


def test_observe_command_passes_the_network_as_an_argument() -> None:
    argv = observe_command("vm net;reboot")
    assert argv[:2] == ["bash", "-c"]
    assert argv[3:] == ["observe", "vm net;reboot"]  # $0 and $1 of the script: never pasted in
    assert "vm net" not in argv[2]
    assert 'net-dhcp-leases "$1"' in argv[2] and "--- neighbors" in argv[2]


# What `observe_command` prints on a node: `virsh -q net-dhcp-leases NET`, then the marker, then
# `ip -4 neigh show`.
OBSERVED = "\n".join(
    [
        " 2026-11-25 14:03:22   52:54:00:12:34:56   ipv4       10.213.11.120/24   vm-1          "
        "ff:00:12:34:56:00:01:00:01:2e:9a:0b:1c:52:54:00:12:34:56",
        " 2026-11-25 13:58:01   52:54:00:AB:CD:EF   ipv4       10.213.11.121/24   -             -",
        " 2026-11-25 14:01:00   52:54:00:12:34:56   ipv6       fd00::120/64       vm-1          "
        "00:04:12:34",
        "--- neighbors",
        "10.213.11.120 dev vmbr0 lladdr 52:54:00:12:34:56 REACHABLE",
        "10.213.11.121 dev vmbr0 lladdr 52:54:00:ab:cd:ef STALE",
        "10.0.0.9 dev vmbr0 FAILED",
        "10.0.0.10 dev vmbr0 INCOMPLETE",
        "10.0.0.1 dev eth0 lladdr aa:bb:cc:dd:ee:ff router DELAY",
        "",
    ]
)


def test_parse_observation_of_real_output() -> None:
    seen = parse_observation(OBSERVED)
    assert seen.leases == (
        Lease("52:54:00:12:34:56", "10.213.11.120", "2026-11-25 14:03:22"),
        Lease("52:54:00:AB:CD:EF", "10.213.11.121", "2026-11-25 13:58:01"),
    )
    assert seen.neighbors == (
        Neighbor("52:54:00:12:34:56", "10.213.11.120", "REACHABLE"),
        Neighbor("52:54:00:ab:cd:ef", "10.213.11.121", "STALE"),
        Neighbor("aa:bb:cc:dd:ee:ff", "10.0.0.1", "DELAY"),
    )
    assert address_from(seen, "52:54:00:ab:cd:ef", "lease") == "10.213.11.121"
    assert address_from(seen, "52:54:00:12:34:56", "arp") == "10.213.11.120"


@pytest.mark.parametrize("output", ["", "\n", "--- neighbors\n", "\n--- neighbors"])
def test_parse_observation_of_nothing(output: str) -> None:
    assert parse_observation(output) == Observation()


def test_neighbors_alone_and_leases_alone() -> None:
    neighbors_only = "--- neighbors\n10.0.0.5 dev virbr1 lladdr 52:54:00:00:00:05 PERMANENT\n"
    assert parse_observation(neighbors_only) == Observation(
        neighbors=(Neighbor("52:54:00:00:00:05", "10.0.0.5", "PERMANENT"),)
    )
    lease = " 2026-11-25 12:00:00  52:54:00:00:00:05  ipv4  10.0.0.5/24  host  -\n"
    assert parse_observation(lease + "--- neighbors\n") == Observation(
        leases=(Lease("52:54:00:00:00:05", "10.0.0.5", "2026-11-25 12:00:00"),)
    )


def test_a_lease_line_is_never_read_as_a_neighbor_and_back() -> None:
    # Without the marker (e.g. a truncated output), everything is taken for leases.
    assert parse_observation("10.0.0.5 dev vmbr0 lladdr 52:54:00:00:00:05 REACHABLE\n") == (
        Observation()
    )
    both_ways = "--- neighbors\n 2026-11-25 12:00:00  52:54:00:00:00:05  ipv4  10.0.0.5/24  h\n"
    assert parse_observation(both_ways) == Observation()


def test_garbage_lines_are_skipped() -> None:
    output = """\
 Expiry Time           MAC address         Protocol   IP address          Hostname   Client ID
-------------------------------------------------------------------------------------------------
error: failed to get network 'vmnet'
 2026-11-25 14:03:22   52:54:00:12:34:56   ipv4       10.213.11.120/24   vm-1   -
short line
--- neighbors
Device "vmbr9" does not exist.
10.0.0.7 dev vmbr0 lladdr
lladdr

10.213.11.120 dev vmbr0 lladdr 52:54:00:12:34:56 STALE
"""
    assert parse_observation(output) == Observation(
        leases=(Lease("52:54:00:12:34:56", "10.213.11.120", "2026-11-25 14:03:22"),),
        neighbors=(Neighbor("52:54:00:12:34:56", "10.213.11.120", "STALE"),),
    )


def test_lines_whose_address_does_not_parse_are_skipped() -> None:
    output = (
        " 2026-11-25 14:03:22  52:54:00:00:00:05  ipv4  (unknown)  vm-1  -\n"
        "--- neighbors\n"
        "dev vmbr0 lladdr 52:54:00:00:00:05 REACHABLE\n"
    )
    seen = parse_observation(output)
    assert seen == Observation()
    assert address_from(seen, "52:54:00:00:00:05", "arp") is None


# libvirt's lease status file, as scripts/watch-leases.sh hands it over (one line)

STATUS = (
    '[ { "ip-address": "10.213.11.13", "mac-address": "52:54:00:44:a0:78", "hostname": "web-1",'
    ' "client-id": "ff:32", "expiry-time": 1796158835 },'
    ' { "ip-address": "fd00::5", "mac-address": "52:54:00:44:a0:79", "expiry-time": 1796158835 },'
    ' { "ip-address": "10.213.11.14", "mac-address": "52:54:00:44:a0:7a" } ]'
)


def test_lease_status_gives_ipv4_leases_with_their_expiry_as_virsh_prints_it() -> None:
    assert parse_lease_status(STATUS) == [
        Lease("52:54:00:44:a0:78", "10.213.11.13", "2026-12-01 21:00:35"),
        Lease("52:54:00:44:a0:7a", "10.213.11.14", ""),
    ]


@pytest.mark.parametrize(
    "text",
    ["", "  ", "[]", "not json", '{"ip-address": "10.0.0.1"}', "[1, null, []]",
     '[{"ip-address": "10.0.0.300", "mac-address": "52:54:00:00:00:01"}]',
     '[{"ip-address": 5, "mac-address": "52:54:00:00:00:01"}]'],
)  # fmt: skip
def test_lease_status_that_holds_no_lease(text: str) -> None:
    assert parse_lease_status(text) == []


def test_a_lease_with_an_absurd_expiry_keeps_its_address() -> None:
    text = '[{"ip-address": "10.0.0.5", "mac-address": "52:54:00:00:00:01", "expiry-time": -1}]'
    assert parse_lease_status(text) == [Lease("52:54:00:00:00:01", "10.0.0.5", "")]


def test_a_script_is_named_in_messages_by_its_name_and_arguments_not_its_text() -> None:
    argv = script_command("delete-vm.sh", delete_args("web-1", "/srv/vms"))
    assert describe(argv) == "delete-vm.sh --name web-1 --storage /srv/vms"
    assert describe(["virsh", "-q", "list", "--name"]) == "virsh -q list --name"
    assert describe(["bash", "-c", "echo hi", "x"]) == "bash -c 'echo hi' x"  # one line: as is


def test_the_staged_files_travel_as_a_tar_of_private_files() -> None:
    import io
    import tarfile

    from vmctl.core.nodecmd import staged_archive

    files = {"domain.xml": "<domain/>", "user-data": "#cloud-config\nhostname: wéb\n"}
    with tarfile.open(fileobj=io.BytesIO(staged_archive(files))) as archive:
        members = archive.getmembers()
        assert [(m.name, m.mode, m.isfile()) for m in members] == [
            ("domain.xml", 0o600, True),
            ("user-data", 0o600, True),
        ]
        got = {m.name: archive.extractfile(m).read().decode() for m in members}  # type: ignore[union-attr]
    assert got == files
    argv = create_args(SPEC, Disks("/b", 4, 0), "/s", unpack=True)
    assert argv[-1] == "--unpack-stdin"
