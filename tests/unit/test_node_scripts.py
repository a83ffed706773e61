"""The node scripts refuse bad arguments before touching anything (run locally, no libvirt)."""

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def create(
    tmp_path: Path, env: dict[str, str] | None = None, extra: tuple[str, ...] = (), **overrides: str
) -> subprocess.CompletedProcess[str]:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    for f in ("domain.xml", "user-data", "meta-data"):
        (staging / f).write_text("x")
    args = {
        "name": "web-1",
        "base": str(tmp_path / "base.qcow2"),
        "root-gb": "4",
        "data-gb": "1",
        "storage": str(tmp_path / "vms"),
        "staging": str(staging),
    }
    args.update(overrides)
    argv = ["bash", str(SCRIPTS / "create-vm.sh")]
    for k, v in args.items():
        argv += [f"--{k}", v]
    return subprocess.run([*argv, *extra], capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "a;reboot"),
        ("name", "$(id)"),
        ("name", "../x"),
        ("name", "-rf"),
        ("name", ""),
        ("name", "x" * 64),
        ("name", "Web"),
        ("name", "wéb"),
        ("root-gb", "0"),
        ("root-gb", "abc"),
        ("data-gb", "-5"),
        ("storage", "relative/path"),
        ("storage", "/srv/../etc"),
    ],
)
def test_create_refuses_bad_arguments(tmp_path: Path, field: str, value: str) -> None:
    proc = create(tmp_path, **{field: value})
    assert proc.returncode == 2, proc.stderr
    assert f"--{field}" in proc.stderr
    assert not (tmp_path / "vms").exists()


def test_create_reports_missing_base_image(tmp_path: Path) -> None:
    proc = create(tmp_path)
    assert proc.returncode == 3
    assert "base image" in proc.stderr
    assert not (tmp_path / "vms").exists()


def test_delete_refuses_bad_name() -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "delete-vm.sh"), "--name", "x;y", "--storage", "/srv"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "invalid --name" in proc.stderr


RESERVATION = {"network": "vmnet", "mac": "52:54:00:ab:cd:ef", "ip": "10.213.11.77"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("network", ""),
        ("network", "a b"),
        ("network", "a;reboot"),
        ("network", "$(id)"),
        ("network", "n/et"),
        ("network", "x" * 65),
        ("mac", ""),
        ("mac", "52:54:00:ab:cd"),
        ("mac", "52:54:00:ab:cd:ef:01"),
        ("mac", "52-54-00-ab-cd-ef"),
        ("mac", "52:54:00:ab:cd:eg"),
        ("mac", "525400abcdef"),
        ("ip", ""),
        ("ip", "10.213.11"),
        ("ip", "10.213.11.256"),
        ("ip", "10.213.11.77.1"),
        ("ip", "010.213.11.77"),
        ("ip", "10.213.11.77/24"),
        ("ip", "fe80::1"),
        ("ip", "a.b.c.d"),
    ],
)
def test_create_refuses_a_bad_reservation(tmp_path: Path, field: str, value: str) -> None:
    proc = create(tmp_path, **{**RESERVATION, field: value})
    assert proc.returncode == 2, proc.stderr
    assert f"invalid --{field}" in proc.stderr
    assert not (tmp_path / "vms").exists()


@pytest.mark.parametrize(
    "given", [("network",), ("mac",), ("ip",), ("network", "mac"), ("mac", "ip"), ("network", "ip")]
)
def test_create_wants_network_mac_and_ip_together(tmp_path: Path, given: tuple[str, ...]) -> None:
    proc = create(tmp_path, **{k: RESERVATION[k] for k in given})
    assert proc.returncode == 2, proc.stderr
    missing = [f"--{k}" for k in RESERVATION if k not in given]
    assert f"--network, --mac and --ip go together: missing {' '.join(missing)}" in proc.stderr
    assert not (tmp_path / "vms").exists()


@pytest.mark.parametrize("mac", ["52:54:00:ab:cd:ef", "52:54:00:AB:CD:EF"])
def test_create_accepts_a_good_reservation(tmp_path: Path, mac: str) -> None:
    proc = create(tmp_path, **{**RESERVATION, "mac": mac})
    assert proc.returncode == 3, proc.stderr  # arguments accepted; the base image is missing


@pytest.mark.parametrize("option", ["--network", "--mac", "--ip", "--name"])
def test_create_refuses_an_option_without_value(tmp_path: Path, option: str) -> None:
    proc = create(tmp_path, extra=(option,))
    assert proc.returncode == 2, proc.stderr
    assert f"missing value after {option}" in proc.stderr


def delete(*args: str) -> subprocess.CompletedProcess[str]:
    argv = ["bash", str(SCRIPTS / "delete-vm.sh"), "--name", "web-1", "--storage", "/nonexistent"]
    return subprocess.run([*argv, *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--network", "a b", "--mac", "52:54:00:ab:cd:ef"], "invalid --network"),
        (["--network", "x" * 65, "--mac", "52:54:00:ab:cd:ef"], "invalid --network"),
        (["--network", "vmnet", "--mac", "52:54:00:ab:cd"], "invalid --mac"),
        (["--network", "vmnet", "--mac", "$(id)"], "invalid --mac"),
        (["--network", "vmnet"], "--network and --mac go together: missing --mac"),
        (["--mac", "52:54:00:ab:cd:ef"], "--network and --mac go together: missing --network"),
        (["--network"], "missing value after --network"),
        (["--ip", "10.213.11.77"], "unknown argument: --ip"),
    ],
)
def test_delete_refuses_a_bad_reservation(args: list[str], message: str) -> None:
    proc = delete(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


FAKE_NET = """<network>
  <name>vmnet</name>
  <dns>
    <host ip='10.213.11.77'><hostname>dns-only</hostname></host>
  </dns>
  <ip address='10.213.11.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='10.213.11.100' end='10.213.11.254'/>
      <host ip="10.213.11.77" name="old" mac="52:54:00:00:00:01"/>
      <host name='other' ip='10.213.11.78' mac='52:54:00:00:00:02'/>
      <host mac='52:54:00:AB:CD:EF' ip='10.213.11.79'/>
      <host mac='52:54:00:00:00:03' ip='10.213.11.80' name='web-1'>
        <lease expiry='1' unit='hours'/>
      </host>
    </dhcp>
  </ip>
</network>
"""
FAKE_LEASES = (
    " 2030-01-01 10:00:00   52:54:00:00:00:01   ipv4   10.213.11.77/24   old   -\n"
    " 2030-01-01 10:00:00   52:54:00:ab:cd:ef   ipv4   10.213.11.79/24   -     ff:00:01\n"
)


def fake_node(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose virsh answers from FAKE_NET (attributes in any order, either quote) and whose
    virsh net-update, dhcp_release and qemu-img (which fails) only log their arguments."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    (tmp_path / "net.xml").write_text(FAKE_NET)
    (tmp_path / "leases").write_text(FAKE_LEASES)
    scripts = {
        "virsh": f"""#!/bin/bash
while [[ $1 == -q || $1 == -c ]]; do [[ $1 == -c ]] && shift; shift; done
[[ -e {tmp_path}/libvirtd-down ]] && {{ echo "error: failed to connect" >&2; exit 1; }}
case $1 in
  uri) echo qemu:///system ;;
  dominfo) exit 1 ;;
  net-info) printf 'Name: vmnet\\nActive:    yes\\nPersistent: no\\nBridge:    vmbr0\\n' ;;
  net-dumpxml) cat {tmp_path}/net.xml ;;
  net-dhcp-leases) cat {tmp_path}/leases ;;
  *) echo "virsh $*" >>{log} ;;
esac
""",
        "dhcp_release": f'#!/bin/bash\necho "dhcp_release $*" >>{log}\n',
        "qemu-img": "#!/bin/bash\nexit 1\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def test_delete_finds_reservations_in_any_attribute_order(tmp_path: Path) -> None:
    env, log = fake_node(tmp_path)
    argv = ["bash", str(SCRIPTS / "delete-vm.sh"), "--name", "web-1", "--storage", str(tmp_path)]
    argv += ["--network", "vmnet", "--mac", "52:54:00:00:00:01"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines() == [
        "virsh net-update --network vmnet --command delete --section ip-dhcp-host"
        " --xml <host mac='52:54:00:00:00:01' name='old' ip='10.213.11.77'/> --live",
        "dhcp_release vmbr0 10.213.11.77 52:54:00:00:00:01",
    ]


def test_delete_removes_nothing_when_libvirt_does_not_answer(tmp_path: Path) -> None:
    env, _ = fake_node(tmp_path)
    (tmp_path / "libvirtd-down").touch()
    vmdir = tmp_path / "web-1"
    vmdir.mkdir()
    (vmdir / ".vmctl").touch()
    argv = ["bash", str(SCRIPTS / "delete-vm.sh"), "--name", "web-1", "--storage", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert "does not answer; nothing removed" in proc.stderr
    assert (vmdir / ".vmctl").exists()


def test_create_replaces_stale_reservations_and_undoes_its_own_on_failure(tmp_path: Path) -> None:
    env, log = fake_node(tmp_path)
    (tmp_path / "base.qcow2").write_text("")
    proc = create(tmp_path, env, network="vmnet", mac="52:54:00:AB:CD:EF", ip="10.213.11.77")
    assert proc.returncode == 1, proc.stderr  # the fake qemu-img fails after the reservation
    delete = "virsh net-update --network vmnet --command delete --section ip-dhcp-host --xml"
    assert log.read_text().splitlines() == [
        # the same address, the same MAC, the same name: all stale; the DNS <host> is not DHCP
        f"{delete} <host mac='52:54:00:00:00:01' name='old' ip='10.213.11.77'/> --live",
        f"{delete} <host mac='52:54:00:ab:cd:ef' ip='10.213.11.79'/> --live",
        f"{delete} <host mac='52:54:00:00:00:03' name='web-1' ip='10.213.11.80'/> --live",
        "virsh net-update --network vmnet --command add-last --section ip-dhcp-host"
        " --xml <host mac='52:54:00:ab:cd:ef' name='web-1' ip='10.213.11.77'/> --live",
        "dhcp_release vmbr0 10.213.11.77 52:54:00:00:00:01",
        # cleanup: the reservation this run added goes again
        f"{delete} <host mac='52:54:00:ab:cd:ef' ip='10.213.11.77'/> --live",
    ]
    assert "removing what this run made" in proc.stderr
    assert not (tmp_path / "vms" / "web-1").exists()


def test_create_unpacks_the_staged_files_from_stdin_and_removes_them(tmp_path: Path) -> None:
    from vmctl.core.nodecmd import staged_archive

    env, _ = fake_node(tmp_path)
    (tmp_path / "base.qcow2").write_text("")
    storage, seen = tmp_path / "vms", tmp_path / "seen"
    # qemu-img (the first step after the unpacking) shows what was staged, then fails
    qemu_img = tmp_path / "bin" / "qemu-img"
    qemu_img.write_text(f"#!/bin/bash\ncp -a {storage}/.staging/. {seen}/\nexit 1\n")
    files = {"domain.xml": "<domain/>", "user-data": "#cloud-config\nhostname: wéb\n"}
    files["meta-data"] = "instance-id: x\n"
    staging = f"{storage}/.staging/web-1.0123abcd"
    argv = ["bash", str(SCRIPTS / "create-vm.sh"), "--name", "web-1"]
    argv += ["--base", str(tmp_path / "base.qcow2"), "--root-gb", "4", "--data-gb", "1"]
    argv += ["--storage", str(storage), "--staging", staging, "--unpack-stdin"]
    proc = subprocess.run(argv, input=staged_archive(files), capture_output=True, env=env)
    assert proc.returncode == 1, proc.stderr
    unpacked = seen / "web-1.0123abcd"
    assert {p.name: p.read_text() for p in unpacked.iterdir()} == files
    assert {p.stat().st_mode & 0o777 for p in unpacked.iterdir()} == {0o600}
    assert unpacked.stat().st_mode & 0o777 == 0o700
    assert list((storage / ".staging").iterdir()) == []  # removed on the way out


@pytest.mark.parametrize(
    "staging",
    [
        "/elsewhere/web-1.0123abcd",
        "{storage}/.staging/web-2.0123abcd",
        "{storage}/.staging/web-1.xyz",
    ],
)
def test_create_refuses_an_unpack_staging_of_another_form(tmp_path: Path, staging: str) -> None:
    storage = tmp_path / "vms"
    proc = create(tmp_path, staging=staging.format(storage=storage), extra=("--unpack-stdin",))
    assert proc.returncode == 2, proc.stderr
    assert "invalid --staging" in proc.stderr
    assert not storage.exists()
