"""Rendering libvirt domain XML: a pure function of a GuestSpec.

The same XML serves real KVM hosts and the lab; only `virt_type` differs (the lab's nested KVM
cannot run stock guest kernels, so it uses `qemu`, software emulation).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from vmctl.core.records import Mark
from vmctl.core.storage import Disk, FileDisk, GuestDisks, RbdDisk

METADATA_NS = "https://github.com/vmctl/vmctl/xmlns/1"


@dataclass(frozen=True)
class GuestSpec:
    name: str
    ram_mb: int
    cpu: int
    storage_dir: str  # the VM's node-local directory is storage_dir/name (console log)
    network: str
    mac: str
    image: str
    virt_type: str = "kvm"  # "kvm" on real hosts, "qemu" (TCG) where KVM cannot run guests
    data_disk: bool = True
    kernel: str | None = None  # direct kernel boot when set, else boot from disk
    initrd: str | None = None
    cmdline: str | None = None
    tcg_tb_cache_mb: int = 128
    mark: Mark | None = None  # vmctl's ownership mark, in the domain's metadata
    disks: GuestDisks | None = None  # None: qcow2 files in vm_dir (see ``guest_disks``)

    @property
    def vm_dir(self) -> str:
        return f"{self.storage_dir}/{self.name}"

    def guest_disks(self) -> GuestDisks:
        if self.disks is not None:
            return self.disks
        return local_disks(self.vm_dir, self.data_disk)


def local_disks(vm_dir: str, data_disk: bool) -> GuestDisks:
    """The files of a VM kept in a node directory: root.qcow2, data.qcow2, seed.iso."""
    return GuestDisks(
        root=FileDisk(f"{vm_dir}/root.qcow2"),
        data=FileDisk(f"{vm_dir}/data.qcow2") if data_disk else None,
        seed=FileDisk(f"{vm_dir}/seed.iso", "raw"),
    )


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def _disk(devices: ET.Element, source: Disk, target: str, readonly: bool = False) -> None:
    if isinstance(source, RbdDisk):
        disk = _sub(devices, "disk", type="network", device="disk")
    else:
        disk = _sub(devices, "disk", type="file", device="disk")
    if readonly:  # the seed: never part of a snapshot
        disk.set("snapshot", "no")
    driver = {"discard": "unmap" if not readonly else "ignore"}
    if isinstance(source, RbdDisk):
        driver["cache"] = "writeback"  # librbd's cache; flushes reach Ceph as the guest asks
    _sub(disk, "driver", name="qemu", type=source.format, **driver)
    if isinstance(source, RbdDisk):
        auth = _sub(disk, "auth", username=source.user)
        _sub(auth, "secret", type="ceph", uuid=source.secret_uuid)
        src = _sub(disk, "source", protocol="rbd", name=f"{source.pool}/{source.image}")
        for host, port in source.hosts():
            _sub(src, "host", name=host, port=port)
    else:
        _sub(disk, "source", file=source.path)
    _sub(disk, "target", dev=target, bus="virtio")
    if readonly:
        _sub(disk, "readonly")


def parse_mark(xml: str) -> Mark | None:
    """vmctl's mark in a domain's XML (`virsh dumpxml`), or in `virsh metadata NAME URI` output
    (there libvirt prints the element without its namespace); None when it carries none (not
    made by vmctl, or made before marks existed)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    ns = f"{{{METADATA_NS}}}"
    if root.tag in (f"{ns}vm", "vm"):
        vm: ET.Element | None = root
        ns = ns if root.tag.startswith("{") else ""
    else:
        vm = root.find(f"metadata/{ns}vm")
    if vm is None:
        return None
    values = {
        tag: vm.findtext(f"{ns}{tag}") or "" for tag in ("name", "id", "installation", "manager")
    }
    if not all(values.values()) or not values["id"].isdigit():
        return None
    return Mark(
        installation=values["installation"],
        record_id=int(values["id"]),
        vm=values["name"],
        manager=values["manager"],
    )


def render(spec: GuestSpec) -> str:
    ET.register_namespace("vmctl", METADATA_NS)
    dom = ET.Element("domain", type=spec.virt_type)
    _sub(dom, "name", spec.name)
    meta = _sub(_sub(dom, "metadata"), f"{{{METADATA_NS}}}vm")
    _sub(meta, f"{{{METADATA_NS}}}image", spec.image)
    if spec.mark is not None:
        _sub(meta, f"{{{METADATA_NS}}}name", spec.mark.vm)
        _sub(meta, f"{{{METADATA_NS}}}id", str(spec.mark.record_id))
        _sub(meta, f"{{{METADATA_NS}}}installation", spec.mark.installation)
        _sub(meta, f"{{{METADATA_NS}}}manager", spec.mark.manager)
    _sub(dom, "memory", str(spec.ram_mb), unit="MiB")
    _sub(dom, "vcpu", str(spec.cpu))
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    if spec.kernel:
        _sub(os_el, "kernel", spec.kernel)
        if spec.initrd:
            _sub(os_el, "initrd", spec.initrd)
        _sub(os_el, "cmdline", spec.cmdline or "root=/dev/vda1 console=ttyS0")
    else:
        _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.virt_type == "qemu":
        tcg = _sub(features, "tcg")
        _sub(tcg, "tb-cache", str(spec.tcg_tb_cache_mb), unit="MiB")
    else:
        _sub(dom, "cpu", mode="host-passthrough")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    disks = spec.guest_disks()
    _disk(devices, disks.root, "vda")
    if disks.data is not None:
        _disk(devices, disks.data, "vdb")
    # The seed on a virtio disk: cloud kernels lack the SATA/AHCI driver a cdrom would need.
    _disk(devices, disks.seed, "vdz", readonly=True)
    nic = _sub(devices, "interface", type="network")
    _sub(nic, "source", network=spec.network)
    _sub(nic, "mac", address=spec.mac)
    _sub(nic, "model", type="virtio")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=f"{spec.vm_dir}/console.log", append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    agent = _sub(devices, "channel", type="unix")
    _sub(agent, "target", type="virtio", name="org.qemu.guest_agent.0")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(devices, "memballoon", model="virtio")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"
