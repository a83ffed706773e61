"""Load and check inventory.yaml: the nodes vmctl manages, their images and the VM defaults.

Every key is checked on load; any mistake becomes one `ConfigError` that names the file, the node
(or image) and the key path of each problem, one problem a line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from vmctl.core.errors import ConfigError, NotFound
from vmctl.core.inventory_problems import CUSTOM, describe, yaml_problem
from vmctl.core.validation import NAME_RE, twice

_NODE_NAME = NAME_RE  # node names are DNS labels, as VM names are
_IMAGE_NAME = re.compile(r"[a-z][a-z0-9.-]{0,62}")  # dots for versions: ubuntu-24.04


def _fail(reason: str) -> NoReturn:
    raise PydanticCustomError(CUSTOM, "{reason}", {"reason": reason})


def _name(pattern: re.Pattern[str], allowed: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            _fail(
                f"invalid name {value!r}: use lowercase letters, digits and {allowed}, "
                "starting with a letter, at most 63 characters"
            )
        return value

    return AfterValidator(check)


def _check_absolute(value: str) -> str:
    if not PurePosixPath(value).is_absolute():
        _fail(f"must be an absolute path (got {value!r})")
    return value


def _ip(kind: type[IPv4Network] | type[IPv4Address], what: str, like: str) -> PlainValidator:
    def parse(value: Any) -> IPv4Network | IPv4Address:
        if isinstance(value, kind):
            return value
        if not isinstance(value, str):
            _fail(f"expected an IPv4 {what} like {like} (got {value!r})")
        try:
            return kind(value)
        except ValueError as error:
            _fail(f"{value!r} is not a valid IPv4 {what}: {error}")

    return PlainValidator(parse)


PositiveInt = Annotated[int, Strict(), Field(gt=0)]
Ratio = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
Text = Annotated[str, Strict(), Field(min_length=1)]
NodeName = Annotated[str, Strict(), _name(_NODE_NAME, "'-'")]
ImageName = Annotated[str, Strict(), _name(_IMAGE_NAME, "'-', '.'")]
AbsolutePath = Annotated[str, Strict(), AfterValidator(_check_absolute)]
Subnet = Annotated[IPv4Network, _ip(IPv4Network, "network", "10.20.1.0/24")]
Address = Annotated[IPv4Address, _ip(IPv4Address, "address", "10.20.1.1")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Model):
    """What `vmctl create` uses when it is not told otherwise."""

    image: Text
    ram_mb: PositiveInt
    cpu: PositiveInt
    disk_gb: PositiveInt
    root_gb: PositiveInt = 10  # size of the root disk (a copy-on-write overlay of the image)


class Image(_Model):
    """A base image, at the same path on every node; `boot: kernel` boots kernel and initrd."""

    path: AbsolutePath
    default_user: Text
    boot: Literal["disk", "kernel"] = "disk"
    kernel: AbsolutePath | None = None
    initrd: AbsolutePath | None = None
    cmdline: Text | None = None

    @model_validator(mode="after")
    def _boot_files(self) -> Image:
        if self.boot == "kernel" and self.kernel is None:
            _fail("boot: kernel needs a kernel path (and usually initrd)")
        if self.boot == "disk" and (self.kernel or self.initrd or self.cmdline):
            _fail("kernel, initrd and cmdline are only used with boot: kernel")
        return self


class Ssh(_Model):
    """How vmctl reaches a node over SSH."""

    host: Text
    port: Annotated[int, Strict(), Field(ge=1, le=65535)] = 22
    user: Text = "root"


class Capacity(_Model):
    """The physical resources of a node."""

    cpu: PositiveInt
    ram_mb: PositiveInt
    disk_gb: PositiveInt


class Overcommit(_Model):
    """How far beyond its capacity a node may be booked (1.0: not at all)."""

    cpu: Ratio = 1.0
    ram: Ratio = 1.0
    disk: Ratio = 1.0


LOCAL_DIR = "/var/lib/libvirt/images/vmctl"  # default node-local directory of each VM
Monitor = Annotated[str, Strict(), Field(pattern=r"^[A-Za-z0-9_.:\[\]-]{1,255}$")]
Uuid = Annotated[
    str, Strict(), Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
]
PoolName = Annotated[str, Strict(), Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")]
CephUser = Annotated[str, Strict(), Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")]


class Storage(_Model):
    """Where a node keeps VM disks: qcow2 files in a directory (`type: dir`, `path`), or images
    in a Ceph RBD pool (`type: rbd`) that several nodes may share.

    RBD: `pool`, the cluster's `monitors` (host or host:port), the cephx `user` (without
    `client.`), the UUID of the libvirt secret of type ceph on the node that holds the user's key
    (`secret_uuid`), and the keyring the node's `rbd` command reads (`keyring`, by default
    /etc/ceph/ceph.client.USER.keyring). `path` is then where the node keeps each VM's local
    files (its console log); `ratio` is how far beyond the pool's free space its disks may be
    provisioned (clones are thin)."""

    type: Literal["dir", "rbd"] = "dir"
    path: AbsolutePath | None = None
    pool: PoolName | None = None
    monitors: Annotated[list[Monitor], Field(min_length=1)] | None = None
    user: CephUser | None = None
    secret_uuid: Uuid | None = None
    keyring: AbsolutePath | None = None
    ratio: Ratio = 1.0

    @model_validator(mode="after")
    def _location(self) -> Storage:
        rbd_keys = {"pool", "monitors", "user", "secret_uuid", "keyring"}
        given = {key for key in rbd_keys if getattr(self, key) is not None}
        if self.type == "dir":
            if self.path is None:
                _fail("type: dir needs a path")
            if given or "ratio" in self.model_fields_set:
                _fail(f"type: dir takes only path (not {', '.join(sorted(given) or ['ratio'])})")
        if self.type == "rbd":
            missing = {"pool", "monitors", "user", "secret_uuid"} - given
            if missing:
                _fail(f"type: rbd needs {', '.join(sorted(missing))}")
        return self

    @property
    def directory(self) -> str:
        """Where the node keeps each VM's local files (disks of `dir`, console log)."""
        return self.path or LOCAL_DIR

    @property
    def keyring_path(self) -> str:
        return self.keyring or f"/etc/ceph/ceph.client.{self.user}.keyring"

    @property
    def pool_key(self) -> str | None:
        """Names the RBD pool (cluster and pool) nodes share capacity in; None for `dir`."""
        if self.type != "rbd":
            return None
        return f"{self.pool}@{','.join(sorted(self.monitors or []))}"


class AddressRange(_Model):
    """The addresses vmctl may hand out on a managed network, first and last included."""

    first: Address
    last: Address


class Network(_Model):
    """The libvirt network guests join on a node.

    `managed: true` means vmctl assigns each VM its address before boot (from `addresses`, by
    default every host address of the subnet but the gateway) and reserves it for the VM's MAC in
    the network's DHCP. Keep `addresses` outside the DHCP server's dynamic range.
    """

    name: Text
    subnet: Subnet
    gateway: Address
    managed: Annotated[bool, Strict()] = False
    addresses: AddressRange | None = None

    @model_validator(mode="after")
    def _gateway_inside(self) -> Network:
        ends = (self.subnet.network_address, self.subnet.broadcast_address)
        if self.gateway not in self.subnet or (self.subnet.prefixlen < 31 and self.gateway in ends):
            _fail(f"gateway {self.gateway} is not a host address of subnet {self.subnet}")
        if self.addresses is not None:
            if not self.managed:
                _fail("addresses is only used with managed: true")
            first, last = self.addresses.first, self.addresses.last
            for end in (first, last):
                if end not in self.subnet or (self.subnet.prefixlen < 31 and end in ends):
                    _fail(f"addresses: {end} is not a host address of subnet {self.subnet}")
            if first > last:
                _fail(f"addresses: first {first} comes after last {last}")
        return self

    def pool(self) -> AddressPool | None:
        """The addresses vmctl assigns on this network; None when it does not manage it."""
        if not self.managed:
            return None
        if self.addresses is not None:
            first, last = self.addresses.first, self.addresses.last
        else:
            edge = 1 if self.subnet.prefixlen < 31 else 0  # network and broadcast addresses
            first = self.subnet.network_address + edge
            last = self.subnet.broadcast_address - edge
        return AddressPool(str(self.subnet), first, last, frozenset({self.gateway}))


@dataclass(frozen=True)
class AddressPool:
    """A range of addresses to assign from: ``key`` names the address space (the subnet)."""

    key: str
    first: IPv4Address
    last: IPv4Address
    exclude: frozenset[IPv4Address] = frozenset()

    def __len__(self) -> int:
        return (
            int(self.last)
            - int(self.first)
            + 1
            - sum(1 for ip in self.exclude if self.first <= ip <= self.last)
        )


class Node(_Model):
    """A virtualization node vmctl manages."""

    name: NodeName
    ssh: Ssh
    virt_type: Literal["kvm", "qemu"] = "kvm"
    capacity: Capacity
    overcommit: Overcommit = Overcommit()
    storage: Storage
    network: Network


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"\[[0-9A-Fa-f:.]+\]|{_LABEL}(?:\.{_LABEL})*")  # [IPv6], IPv4 or DNS name
# Prometheus's duration format: units from the largest down, each at most once (1m30s, 2s, 500ms)
_DURATION = re.compile(r"(?:\d+y)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?:\d+ms)?")


def _check_host_port(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not _HOST.fullmatch(host) or len(host) > 253:
        _fail(f"expected HOST:PORT like 10.20.0.5:9100 or [fd00::5]:9100 (got {value!r})")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        _fail(f"the port of {value!r} must be a number from 1 to 65535")
    return value


def _check_duration(value: str) -> str:
    if not value or not _DURATION.fullmatch(value) or not re.search(r"[1-9]", value):
        _fail(f"expected a Prometheus duration like 15s, 1m or 1m30s (got {value!r})")
    return value


def _check_unique(values: list[str]) -> list[str]:
    repeated = twice(values)
    if repeated:
        _fail(f"listed twice: {', '.join(repeated)}")
    return values


HostPort = Annotated[str, Strict(), AfterValidator(_check_host_port)]
HostPorts = Annotated[list[HostPort], AfterValidator(_check_unique)]
Duration = Annotated[str, Strict(), AfterValidator(_check_duration)]
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]


class Monitoring(_Model):
    """Where Prometheus finds the metrics of vmctl and of the exporters around it: the input of
    `vmctl monitoring scrape-config` (docs/monitoring.md). Every address is HOST:PORT; the nodes
    come from `nodes` (their `ssh.host`), with the exporters' ports given here."""

    prometheus: HostPort | None = None  # Prometheus itself: job `prometheus`
    api: HostPorts = []  # each `vmctl serve` replica: job `vmctl-api`
    haproxy: HostPort | None = None  # HAProxy's monitoring frontend: `haproxy`, `vmctl-cloud`
    watch_ip: HostPorts = []  # `vmctl watch-ip --metrics-listen`: job `vmctl-watch-ip`
    postgres_exporter: HostPort | None = None
    redis_exporter: HostPort | None = None
    ceph: HostPorts = []  # the Ceph managers' `prometheus` module
    node_exporter_port: Port | None = 9100  # on every node; null: no job `node`
    libvirt_exporter_port: Port | None = 9177  # on every node; null: no job `libvirt`
    scrape_interval: Duration = "15s"
    evaluation_interval: Duration = "15s"
    rule_files: list[Text] = []  # paths or globs; relative ones from the config file's directory
    alertmanagers: HostPorts = []


def _check_nodes(nodes: list[Node]) -> list[Node]:
    if not nodes:
        _fail("at least one node is needed")
    repeated = twice([node.name for node in nodes])
    if repeated:
        _fail(f"duplicate node name {', '.join(map(repr, repeated))}")
    return nodes


class Manager(_Model):
    """A host that runs vmctl's side of the cloud (the API, PostgreSQL, Redis, HAProxy,
    Prometheus): vmctl never connects to it, Ansible does (`vmctl ansible-inventory`)."""

    name: NodeName
    ssh: Ssh


def _check_managers(managers: list[Manager]) -> list[Manager]:
    repeated = twice([manager.name for manager in managers])
    if repeated:
        _fail(f"duplicate manager name {', '.join(map(repr, repeated))}")
    return managers


class Inventory(_Model):
    """The whole inventory.yaml."""

    defaults: Defaults
    images: dict[ImageName, Image]
    nodes: Annotated[list[Node], AfterValidator(_check_nodes)]
    managers: Annotated[list[Manager], AfterValidator(_check_managers)] = []
    monitoring: Monitoring = Monitoring()

    @model_validator(mode="after")
    def _default_image_exists(self) -> Inventory:
        if self.defaults.image not in self.images:
            _fail(f"defaults.image: {_unknown('image', self.defaults.image, self.images)}")
        return self

    @model_validator(mode="after")
    def _manager_on_a_node_is_that_node(self) -> Inventory:
        """A manager may share a node's name (one machine, both roles) only with its ssh."""
        nodes = {node.name: node for node in self.nodes}
        for manager in self.managers:
            node = nodes.get(manager.name)
            if node is not None and node.ssh != manager.ssh:
                _fail(
                    f"managers: {manager.name!r} is also a node, with another ssh: a name is one "
                    "host, so give it the node's ssh (the same machine) or another name"
                )
        return self

    def node(self, name: str) -> Node:
        """The node called `name`; NotFound if there is none."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise NotFound(_unknown("node", name, [node.name for node in self.nodes]))

    def image(self, name: str) -> Image:
        """The image called `name`; NotFound if there is none."""
        if name not in self.images:
            raise NotFound(_unknown("image", name, self.images))
        return self.images[name]


def _unknown(kind: str, name: str, known: Any) -> str:
    return f"unknown {kind} {name!r} (known: {', '.join(known) or 'none'})"


def load_inventory(path: Path) -> Inventory:
    """Read and check the inventory at `path`; ConfigError naming file, node and key if wrong."""
    import yaml  # only commands that read the inventory pay for it

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the inventory: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: {yaml_problem(error)}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with defaults, images and nodes")
    try:
        return Inventory.model_validate(data)
    except ValidationError as error:
        lines = [f"{path}: {describe(detail, data)}" for detail in error.errors()]
        raise ConfigError("\n".join(lines)) from error
