import copy
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from labkit import config, inventory

from vmctl.core.errors import ConfigError, NotFound
from vmctl.core.inventory import AddressPool, Inventory, Network, load_inventory

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "defaults": {"image": "debian-12", "ram_mb": 512, "cpu": 1, "disk_gb": 1},
    "images": {
        "debian-12": {"path": "/img/debian.qcow2", "default_user": "debian"},
        "tiny": {
            "path": "/img/tiny.qcow2",
            "default_user": "root",
            "boot": "kernel",
            "kernel": "/img/vmlinuz",
            "initrd": "/img/initrd.img",
        },
    },
    "nodes": [
        {
            "name": f"kvm{i}",
            "ssh": {"host": f"10.0.0.{i}"},
            "capacity": {"cpu": 4, "ram_mb": 8192, "disk_gb": 100},
            "storage": {"path": "/var/lib/vmctl"},
            "network": {"name": "vmnet", "subnet": f"10.20.{i}.0/24", "gateway": f"10.20.{i}.1"},
        }
        for i in (1, 2)
    ],
}


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def mutated(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    change(data)
    return data


def test_documented_example_loads() -> None:
    inv = load_inventory(REPO / "inventory.yaml")
    assert [n.name for n in inv.nodes] == ["kvm1", "kvm2"]
    assert inv.defaults.image == "debian-12"
    assert inv.image("ubuntu-24.04").default_user == "ubuntu"
    kvm1 = inv.node("kvm1")
    assert kvm1.overcommit.cpu == 4.0
    assert kvm1.network.subnet == IPv4Network("10.20.1.0/24")
    assert kvm1.network.gateway == IPv4Address("10.20.1.1")
    assert kvm1.network.managed is True


def test_lab_inventory_loads(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(inventory.render(config.nodes(2)))
    inv = load_inventory(path)
    assert [n.name for n in inv.nodes] == ["node1", "node2"]
    assert inv.node("node2").ssh.host == config.nodes(2)[1].address
    assert inv.node("node1").virt_type == "qemu"
    assert inv.image(config.IMAGE_NAME).boot == "disk"


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, BASE))
    node = inv.node("kvm1")
    assert (node.ssh.port, node.ssh.user, node.virt_type) == (22, "root", "kvm")
    assert (node.overcommit.cpu, node.overcommit.ram, node.overcommit.disk) == (1.0, 1.0, 1.0)
    assert node.storage.type == "dir"
    assert node.network.managed is False
    assert inv.image("debian-12").boot == "disk"
    assert inv.image("tiny").kernel == "/img/vmlinuz"


def test_integer_overcommit_ratio_is_accepted(tmp_path: Path) -> None:
    data = mutated(lambda d: d["nodes"][0].update(overcommit={"cpu": 4}))
    assert load_inventory(write(tmp_path, data)).node("kvm1").overcommit.cpu == 4.0


RBD = {
    "type": "rbd",
    "pool": "vms",
    "monitors": ["10.0.0.1", "10.0.0.2:3300"],
    "user": "libvirt",
    "secret_uuid": "3c1b9a52-6f0e-4c55-9a8e-7a6c2f1d0b11",
}


def test_rbd_storage_names_pool_cluster_and_credentials(tmp_path: Path) -> None:
    data = mutated(lambda d: d["nodes"][0].update(storage=dict(RBD)))
    storage = load_inventory(write(tmp_path, data)).node("kvm1").storage
    assert storage.pool == "vms"
    assert storage.keyring_path == "/etc/ceph/ceph.client.libvirt.keyring"
    assert storage.directory == "/var/lib/libvirt/images/vmctl"  # local files: console log
    assert storage.pool_key == "vms@10.0.0.1,10.0.0.2:3300"
    assert storage.ratio == 1.0


def test_rbd_storage_refuses_a_bad_secret_uuid(tmp_path: Path) -> None:
    data = mutated(lambda d: d["nodes"][0].update(storage={**RBD, "secret_uuid": "nope"}))
    with pytest.raises(ConfigError, match=r"node 'kvm1': storage\.secret_uuid"):
        load_inventory(write(tmp_path, data))


def test_dir_storage_refuses_rbd_keys(tmp_path: Path) -> None:
    data = mutated(lambda d: d["nodes"][0]["storage"].update(pool="vms"))
    with pytest.raises(ConfigError, match=r"type: dir takes only path \(not pool\)"):
        load_inventory(write(tmp_path, data))


def test_unknown_node_and_image_name_the_known_ones(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, BASE))
    with pytest.raises(NotFound, match=r"^unknown node 'kvm9' \(known: kvm1, kvm2\)$"):
        inv.node("kvm9")
    with pytest.raises(NotFound, match=r"^unknown image 'arch' \(known: debian-12, tiny\)$"):
        inv.image("arch")


def test_models_are_immutable(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, BASE))
    with pytest.raises(pydantic.ValidationError):
        inv.node("kvm1").capacity.cpu = 8  # type: ignore[misc]


def _parent(data: dict[str, Any], path: str) -> tuple[Any, Any]:
    """The container holding the dotted `path` (list indexes as numbers) and the last key."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target: Any = data
    for part in parents:
        target = target[part]
    return target, last


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target, last = _parent(data, path)
        target[last] = value

    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target, last = _parent(data, path)
        del target[last]

    return change


def _managed(**network: Any) -> Callable[[dict[str, Any]], None]:
    """kvm1's network (10.20.1.0/24, gateway .1) with ``network`` merged in."""

    def change(data: dict[str, Any]) -> None:
        data["nodes"][0]["network"].update(network)

    return change


def _range(first: str, last: str) -> dict[str, str]:
    return {"first": first, "last": last}


BROKEN = [
    ("unknown top-level key", _set("extras", 1), ["unknown key 'extras'"]),
    ("unknown node key", _set("nodes.0.capactiy", {}), ["node 'kvm1': unknown key 'capactiy'"]),
    ("unknown nested key", _set("nodes.1.network.dns", "x"),
     ["node 'kvm2': network: unknown key 'dns'"]),
    ("unknown image key", _set("images.tiny.size", 1), ["image 'tiny': unknown key 'size'"]),
    ("unknown defaults key", _set("defaults.ram", 1), ["defaults: unknown key 'ram'"]),
    ("int as text", _set("nodes.1.capacity.cpu", "abc"),
     ["node 'kvm2': capacity.cpu: Input should be a valid integer (got 'abc')"]),
    ("int as float", _set("nodes.0.capacity.ram_mb", 1.5),
     ["node 'kvm1': capacity.ram_mb: Input should be a valid integer (got 1.5)"]),
    ("int as bool", _set("defaults.cpu", True),
     ["defaults.cpu: Input should be a valid integer (got True)"]),
    ("zero capacity", _set("nodes.0.capacity.disk_gb", 0),
     ["node 'kvm1': capacity.disk_gb: Input should be greater than 0 (got 0)"]),
    ("ratio as bool", _set("nodes.0.overcommit", {"ram": True}),
     ["node 'kvm1': overcommit.ram: Input should be a valid number (got True)"]),
    ("negative ratio", _set("nodes.0.overcommit", {"disk": -1.0}),
     ["node 'kvm1': overcommit.disk: Input should be greater than 0"]),
    ("port as text", _set("nodes.0.ssh.port", "ssh"), ["node 'kvm1': ssh.port: ", "(got 'ssh')"]),
    ("bool as text", _set("nodes.0.network.managed", "yes please"),
     ["node 'kvm1': network.managed: Input should be a valid boolean"]),
    ("block not a mapping", _set("nodes.1.ssh", "kvm2.example"),
     ["node 'kvm2': ssh: expected a mapping (got 'kvm2.example')"]),
    ("missing key", _drop("nodes.1.capacity"), ["node 'kvm2': missing key 'capacity'"]),
    ("missing nested key", _drop("nodes.0.network.gateway"),
     ["node 'kvm1': network: missing key 'gateway'"]),
    ("bad virt_type", _set("nodes.0.virt_type", "xen"), ["node 'kvm1': virt_type: ", "'xen'"]),
    ("bad subnet", _set("nodes.0.network.subnet", "10.20.1.0/33"),
     ["node 'kvm1': network.subnet: '10.20.1.0/33' is not a valid IPv4 network"]),
    ("subnet with host bits", _set("nodes.1.network.subnet", "10.20.2.7/24"),
     ["node 'kvm2': network.subnet: '10.20.2.7/24' is not a valid IPv4 network: ",
      "has host bits set"]),
    ("subnet as number", _set("nodes.0.network.subnet", 5),
     ["node 'kvm1': network.subnet: expected an IPv4 network like 10.20.1.0/24 (got 5)"]),
    ("bad gateway", _set("nodes.0.network.gateway", "10.20.1.300"),
     ["node 'kvm1': network.gateway: '10.20.1.300' is not a valid IPv4 address"]),
    ("gateway outside subnet", _set("nodes.1.network.gateway", "10.20.9.1"),
     ["node 'kvm2': network: gateway 10.20.9.1 is not a host address of subnet 10.20.2.0/24"]),
    ("gateway is the network address", _set("nodes.1.network.gateway", "10.20.2.0"),
     ["node 'kvm2': network: gateway 10.20.2.0 is not a host address"]),
    ("duplicate node names", _set("nodes.1.name", "kvm1"), ["nodes: duplicate node name 'kvm1'"]),
    ("bad node name", _set("nodes.1.name", "KVM_2"),
     ["node 'KVM_2': name: invalid name 'KVM_2'"]),
    ("node without name", _drop("nodes.1.name"), ["nodes[1]: missing key 'name'"]),
    ("node not a mapping", _set("nodes.1", "kvm2"), ["nodes[1]: expected a mapping (got 'kvm2')"]),
    ("no nodes", _set("nodes", []), ["nodes: at least one node is needed"]),
    ("bad image name", _set("images.Debian_12", BASE["images"]["debian-12"]),
     ["image 'Debian_12': invalid name 'Debian_12'"]),
    ("relative image path", _set("images.tiny.path", "img/tiny.qcow2"),
     ["image 'tiny': path: must be an absolute path (got 'img/tiny.qcow2')"]),
    ("defaults.image not in images", _set("defaults.image", "arch"),
     ["defaults.image: unknown image 'arch' (known: debian-12, tiny)"]),
    ("boot kernel without kernel", _drop("images.tiny.kernel"),
     ["image 'tiny': boot: kernel needs a kernel path"]),
    ("kernel with boot disk", _set("images.debian-12.kernel", "/img/vmlinuz"),
     ["image 'debian-12': kernel, initrd and cmdline are only used with boot: kernel"]),
    ("bad boot", _set("images.tiny.boot", "pxe"), ["image 'tiny': boot: ", "(got 'pxe')"]),
    ("dir storage without path", _drop("nodes.0.storage.path"),
     ["node 'kvm1': storage: type: dir needs a path"]),
    ("rbd storage without pool", _set("nodes.0.storage.type", "rbd"),
     ["node 'kvm1': storage: type: rbd needs monitors, pool, secret_uuid, user"]),
    ("relative storage path", _set("nodes.1.storage.path", "vms"),
     ["node 'kvm2': storage.path: must be an absolute path (got 'vms')"]),
    ("addresses on an unmanaged network", _managed(addresses=_range("10.20.1.100", "10.20.1.199")),
     ["node 'kvm1': network: addresses is only used with managed: true"]),
    ("addresses with managed: false",
     _managed(managed=False, addresses=_range("10.20.1.100", "10.20.1.199")),
     ["node 'kvm1': network: addresses is only used with managed: true"]),
    ("addresses start outside the subnet",
     _managed(managed=True, addresses=_range("10.20.9.100", "10.20.1.199")),
     ["node 'kvm1': network: addresses: 10.20.9.100 is not a host address of subnet 10.20.1.0/24"]),
    ("addresses end outside the subnet",
     _managed(managed=True, addresses=_range("10.20.1.100", "10.20.2.10")),
     ["node 'kvm1': network: addresses: 10.20.2.10 is not a host address of subnet 10.20.1.0/24"]),
    ("addresses end at the broadcast address",
     _managed(managed=True, addresses=_range("10.20.1.100", "10.20.1.255")),
     ["node 'kvm1': network: addresses: 10.20.1.255 is not a host address"]),
    ("addresses start at the network address",
     _managed(managed=True, addresses=_range("10.20.1.0", "10.20.1.9")),
     ["node 'kvm1': network: addresses: 10.20.1.0 is not a host address"]),
    ("addresses first after last",
     _managed(managed=True, addresses=_range("10.20.1.200", "10.20.1.100")),
     ["node 'kvm1': network: addresses: first 10.20.1.200 comes after last 10.20.1.100"]),
    ("addresses bad address", _managed(managed=True, addresses=_range("10.20.1.300", "10.20.1.9")),
     ["node 'kvm1': network.addresses.first: '10.20.1.300' is not a valid IPv4 address"]),
    ("addresses without last", _managed(managed=True, addresses={"first": "10.20.1.100"}),
     ["node 'kvm1': network.addresses: missing key 'last'"]),
    ("addresses unknown key",
     _managed(managed=True, addresses={**_range("10.20.1.2", "10.20.1.9"), "count": 8}),
     ["node 'kvm1': network.addresses: unknown key 'count'"]),
    ("addresses not a mapping", _managed(managed=True, addresses="10.20.1.100-10.20.1.199"),
     ["node 'kvm1': network.addresses: expected a mapping (got '10.20.1.100-10.20.1.199')"]),
]  # fmt: skip


@pytest.mark.parametrize(("change", "pieces"), [pytest.param(c, p, id=i) for i, c, p in BROKEN])
def test_broken_inventory_is_refused_naming_file_node_and_key(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], pieces: list[str]
) -> None:
    path = write(tmp_path, mutated(change))
    with pytest.raises(ConfigError) as caught:
        load_inventory(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    for piece in pieces:
        assert piece in message
    assert isinstance(caught.value.__cause__, pydantic.ValidationError)


def test_every_error_is_listed_one_a_line(tmp_path: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        data["nodes"][0]["capactiy"] = {}
        data["nodes"][1]["capacity"]["cpu"] = "abc"
        data["defaults"]["ram_mb"] = -1

    path = write(tmp_path, mutated(change))
    with pytest.raises(ConfigError) as caught:
        load_inventory(path)
    assert sorted(str(caught.value).splitlines()) == [
        f"{path}: defaults.ram_mb: Input should be greater than 0 (got -1)",
        f"{path}: node 'kvm1': unknown key 'capactiy'",
        f"{path}: node 'kvm2': capacity.cpu: Input should be a valid integer (got 'abc')",
    ]


def test_relative_path_is_named_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, mutated(_set("nodes.1.capacity.cpu", "abc")))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_inventory(Path("inventory.yaml"))
    assert str(caught.value) == (
        "inventory.yaml: node 'kvm2': capacity.cpu: Input should be a valid integer (got 'abc')"
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    with pytest.raises(ConfigError, match="cannot read the inventory") as caught:
        load_inventory(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("defaults:\n  image: debian-12\nnodes: [\n  - name: kvm1\n")
    with pytest.raises(ConfigError) as caught:
        load_inventory(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: YAML syntax error at line ")
    assert isinstance(caught.value.__cause__, yaml.YAMLError)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n"])
def test_document_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="expected a mapping with defaults, images and nodes"):
        load_inventory(path)


def test_inventory_can_be_built_in_code() -> None:
    inv = Inventory.model_validate(BASE)
    assert inv.node("kvm2").network.gateway == IPv4Address("10.20.2.1")


# managed networks: the addresses vmctl hands out


def _network(**values: Any) -> Network:
    return Network.model_validate(
        {"name": "vmnet", "subnet": "10.20.1.0/24", "gateway": "10.20.1.1", **values}
    )


def test_network_addresses_are_accepted_with_managed(tmp_path: Path) -> None:
    change = _managed(managed=True, addresses=_range("10.20.1.100", "10.20.1.199"))
    network = load_inventory(write(tmp_path, mutated(change))).node("kvm1").network
    assert network.managed is True
    assert network.addresses is not None
    assert network.addresses.first == IPv4Address("10.20.1.100")
    assert network.addresses.last == IPv4Address("10.20.1.199")


def test_a_range_of_one_address_is_accepted() -> None:
    pool = _network(managed=True, addresses=_range("10.20.1.9", "10.20.1.9")).pool()
    assert pool is not None and len(pool) == 1


def test_pool_defaults_to_every_host_address_but_the_gateway() -> None:
    pool = _network(managed=True).pool()
    assert pool == AddressPool(
        "10.20.1.0/24",
        IPv4Address("10.20.1.1"),
        IPv4Address("10.20.1.254"),
        frozenset({IPv4Address("10.20.1.1")}),
    )
    assert len(pool) == 253


def test_pool_of_the_configured_addresses() -> None:
    pool = _network(managed=True, addresses=_range("10.20.1.100", "10.20.1.199")).pool()
    assert pool == AddressPool(
        "10.20.1.0/24",
        IPv4Address("10.20.1.100"),
        IPv4Address("10.20.1.199"),
        frozenset({IPv4Address("10.20.1.1")}),
    )
    assert len(pool) == 100  # the gateway is outside the range: nothing to leave out


def test_a_gateway_inside_the_configured_addresses_is_left_out() -> None:
    pool = _network(managed=True, addresses=_range("10.20.1.1", "10.20.1.10")).pool()
    assert pool is not None and len(pool) == 9


def test_pool_key_is_the_subnet() -> None:
    pool = _network(subnet="192.168.122.0/24", gateway="192.168.122.1", managed=True).pool()
    assert pool is not None and pool.key == "192.168.122.0/24"


@pytest.mark.parametrize(
    ("subnet", "gateway", "first", "last", "size"),
    [
        ("10.20.1.0/30", "10.20.1.1", "10.20.1.1", "10.20.1.2", 1),
        ("10.20.1.0/31", "10.20.1.0", "10.20.1.0", "10.20.1.1", 1),  # point-to-point: both hosts
        ("10.20.1.7/32", "10.20.1.7", "10.20.1.7", "10.20.1.7", 0),
        ("10.20.0.0/16", "10.20.255.254", "10.20.0.1", "10.20.255.254", 65533),
    ],
)
def test_pool_of_small_and_large_subnets(
    subnet: str, gateway: str, first: str, last: str, size: int
) -> None:
    pool = _network(subnet=subnet, gateway=gateway, managed=True).pool()
    assert pool is not None
    assert (pool.first, pool.last) == (IPv4Address(first), IPv4Address(last))
    assert len(pool) == size


def test_an_unmanaged_network_has_no_pool(tmp_path: Path) -> None:
    assert _network().pool() is None
    assert _network(managed=False).pool() is None
    assert load_inventory(write(tmp_path, BASE)).node("kvm1").network.pool() is None


def test_documented_example_pool() -> None:
    network = load_inventory(REPO / "inventory.yaml").node("kvm1").network
    pool = network.pool()
    assert pool is not None and pool.key == str(network.subnet)
    assert network.gateway in pool.exclude


@pytest.mark.parametrize(
    ("first", "last", "exclude", "size"),
    [
        ("10.0.0.1", "10.0.0.1", (), 1),
        ("10.0.0.1", "10.0.0.10", (), 10),
        ("10.0.0.1", "10.0.0.10", ("10.0.0.1", "10.0.0.10"), 8),
        ("10.0.0.1", "10.0.0.10", ("10.0.0.0", "10.0.0.11", "192.168.1.1"), 10),  # outside
        ("10.0.0.5", "10.0.0.5", ("10.0.0.5",), 0),
    ],
)
def test_len_of_an_address_pool(first: str, last: str, exclude: tuple[str, ...], size: int) -> None:
    pool = AddressPool(
        "k", IPv4Address(first), IPv4Address(last), frozenset(map(IPv4Address, exclude))
    )
    assert len(pool) == size


def test_lab_pools_stay_out_of_the_dhcp_range(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    nodes = config.nodes(3)
    path.write_text(inventory.render(nodes))
    inv = load_inventory(path)
    for lab_node in nodes:
        pool = inv.node(lab_node.name).network.pool()
        assert pool is not None
        dhcp_first, dhcp_last = map(IPv4Address, lab_node.dhcp_range)
        assert pool.last < dhcp_first or pool.first > dhcp_last
        assert pool.first in IPv4Network(lab_node.guest_subnet)
        assert len(pool) == 90
