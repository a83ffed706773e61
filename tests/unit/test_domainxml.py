import xml.etree.ElementTree as ET

import pytest

from vmctl.core.domainxml import GuestSpec, render

pytestmark = pytest.mark.unit


def spec(**kw: object) -> GuestSpec:
    values: dict[str, object] = dict(
        name="web-1",
        ram_mb=1024,
        cpu=2,
        storage_dir="/srv/vms",
        network="vmnet",
        mac="52:54:00:aa:bb:cc",
        image="debian-12",
    )
    values.update(kw)
    return GuestSpec(**values)  # type: ignore[arg-type]


def test_kvm_domain_boots_from_disk_with_host_cpu() -> None:
    dom = ET.fromstring(render(spec()))
    assert dom.get("type") == "kvm"
    assert dom.findtext("name") == "web-1"
    assert dom.find("memory").text == "1024" and dom.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert dom.findtext("vcpu") == "2"
    assert dom.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    assert dom.find("os/kernel") is None
    assert dom.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    assert dom.find("features/tcg") is None


def test_qemu_domain_limits_the_translation_cache() -> None:
    dom = ET.fromstring(render(spec(virt_type="qemu")))
    assert dom.get("type") == "qemu"
    assert dom.find("cpu") is None
    assert dom.findtext("features/tcg/tb-cache") == "128"


def test_disks_nic_and_seed() -> None:
    dom = ET.fromstring(render(spec()))
    disks = dom.findall("devices/disk")
    assert [d.find("source").get("file") for d in disks] == [  # type: ignore[union-attr]
        "/srv/vms/web-1/root.qcow2",
        "/srv/vms/web-1/data.qcow2",
        "/srv/vms/web-1/seed.iso",
    ]
    assert all(d.find("target").get("bus") == "virtio" for d in disks)  # type: ignore[union-attr]
    assert disks[2].find("readonly") is not None
    assert dom.find("devices/interface/mac").get("address") == "52:54:00:aa:bb:cc"  # type: ignore[union-attr]
    assert dom.find("devices/interface/source").get("network") == "vmnet"  # type: ignore[union-attr]
    agent = dom.find("devices/channel/target")
    assert agent is not None and agent.get("name") == "org.qemu.guest_agent.0"


def test_no_data_disk_and_direct_kernel_boot() -> None:
    dom = ET.fromstring(
        render(
            spec(
                data_disk=False,
                kernel="/b/vmlinuz",
                initrd="/b/initrd",
                cmdline="root=/dev/vda1 console=ttyS0",
            )
        )
    )
    assert len(dom.findall("devices/disk")) == 2
    assert dom.findtext("os/kernel") == "/b/vmlinuz"
    assert dom.findtext("os/cmdline") == "root=/dev/vda1 console=ttyS0"
    assert dom.find("os/boot") is None


def test_values_cannot_inject_markup() -> None:
    xml = render(spec(image="x</vmctl:image><evil/>"))
    dom = ET.fromstring(xml)
    assert dom.find(".//evil") is None
    assert "&lt;/vmctl:image&gt;" in xml


def test_the_mark_is_in_the_metadata_and_reads_back_from_dumpxml_or_virsh_metadata() -> None:
    from vmctl.core.domainxml import parse_mark
    from vmctl.core.records import Mark

    mark = Mark("0b7e9c1e-0000-4000-8000-000000000001", 42, "web-1", "manager-1")
    xml = render(GuestSpec("web-1", 256, 1, "/s", "vmnet", "52:54:00:00:00:01", "d", mark=mark))
    assert parse_mark(xml) == mark
    # `virsh metadata web-1 URI` prints the element with no namespace
    plain = (
        "<vm><image>d</image><name>web-1</name><id>42</id>"
        "<installation>0b7e9c1e-0000-4000-8000-000000000001</installation>"
        "<manager>manager-1</manager></vm>"
    )
    assert parse_mark(plain) == mark
    unmarked = GuestSpec("web-1", 256, 1, "/s", "n", "52:54:00:00:00:01", "d")
    assert parse_mark(render(unmarked)) is None
    assert parse_mark("<vm><name>x</name><id>nope</id></vm>") is None
    assert parse_mark("not xml") is None


def test_the_seed_is_never_part_of_a_snapshot() -> None:
    xml = render(GuestSpec("web-1", 256, 1, "/s", "vmnet", "52:54:00:00:00:01", "d"))
    seed = xml[xml.index("seed.iso") - 300 : xml.index("seed.iso")]
    assert 'snapshot="no"' in seed
