"""Ansible's dynamic inventory, rendered from the inventory: the hosts are listed once, in
`inventory.yaml`, and Ansible reads them through `vmctl ansible-inventory` (docs/inventory.md).

Groups: `vmctl_nodes` (every node), `vmctl_dir_nodes` and `vmctl_rbd_nodes` (by storage type: the
Ceph client side goes to the RBD ones), `vmctl_managers` (the `managers:` section, empty without
it). Host names are the inventory's names; each host gets `ansible_host`, `ansible_port` and
`ansible_user` from its `ssh`, a node `vmctl_node` (what the node role templates from: virt type,
storage, network, images, exporter ports) and a manager `vmctl_manager`. No secret is written:
the Ceph key stays in the keyring file the inventory names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmctl.core.inventory import Image, Inventory, Manager, Network, Node, Ssh, Storage

# Group names: the playbooks select on them.
NODES = "vmctl_nodes"
DIR_NODES = "vmctl_dir_nodes"
RBD_NODES = "vmctl_rbd_nodes"
MANAGERS = "vmctl_managers"
GROUPS = (NODES, DIR_NODES, RBD_NODES, MANAGERS)


def _connection(ssh: Ssh) -> dict[str, Any]:
    return {"ansible_host": ssh.host, "ansible_port": ssh.port, "ansible_user": ssh.user}


def _storage(storage: Storage) -> dict[str, Any]:
    if storage.type == "dir":
        return {"type": "dir", "path": storage.directory}
    return {
        "type": "rbd",
        "path": storage.directory,  # the node's local files (console logs)
        "pool": storage.pool,
        "monitors": list(storage.monitors or []),
        "user": storage.user,
        "secret_uuid": storage.secret_uuid,
        "keyring": storage.keyring_path,
    }


def _network(network: Network) -> dict[str, Any]:
    addresses = None
    if network.addresses is not None:
        addresses = {"first": str(network.addresses.first), "last": str(network.addresses.last)}
    return {
        "name": network.name,
        "subnet": str(network.subnet),
        "netmask": str(network.subnet.netmask),
        "prefix": network.subnet.prefixlen,
        "gateway": str(network.gateway),
        "managed": network.managed,
        "addresses": addresses,
        "dhcp_range": dhcp_range(network),
    }


def dhcp_range(network: Network) -> dict[str, str] | None:
    """The dynamic DHCP range a managed network's DHCP server gets: the longer run of the
    subnet's host addresses below or above the ones vmctl reserves (`addresses`), the gateway
    left out. None when the network is not managed, reserves no range, or leaves nothing."""
    if not network.managed or network.addresses is None:
        return None
    hosts = list(network.subnet.hosts())
    first, last = network.addresses.first, network.addresses.last
    runs: list[list[Any]] = [[]]
    for address in hosts:
        if first <= address <= last or address == network.gateway:
            runs.append([])
        else:
            runs[-1].append(address)
    best = max(runs, key=len)
    if not best:
        return None
    return {"start": str(best[0]), "end": str(best[-1])}


def _image(image: Image) -> dict[str, Any]:
    return {
        "path": image.path,
        "default_user": image.default_user,
        "boot": image.boot,
        "kernel": image.kernel,
        "initrd": image.initrd,
        "cmdline": image.cmdline,
    }


def node_vars(inventory: Inventory, node: Node) -> dict[str, Any]:
    """What the node role needs of one node, under `vmctl_node`."""
    mon = inventory.monitoring
    return {
        "name": node.name,
        "virt_type": node.virt_type,
        "storage": _storage(node.storage),
        "network": _network(node.network),
        "images": {name: _image(image) for name, image in inventory.images.items()},
        "exporters": {
            "node_exporter_port": mon.node_exporter_port,
            "libvirt_exporter_port": mon.libvirt_exporter_port,
        },
    }


def manager_vars(inventory: Inventory, manager: Manager) -> dict[str, Any]:
    """What the manager role needs, under `vmctl_manager`: its name and the `monitoring:`
    section (where the API replicas, watch-ip, HAProxy and Prometheus listen)."""
    return {"name": manager.name, "monitoring": inventory.monitoring.model_dump(mode="json")}


def hostvars(inventory: Inventory) -> dict[str, dict[str, Any]]:
    """Every host's variables, by host name; a manager that is also a node has both dicts."""
    result: dict[str, dict[str, Any]] = {}
    for node in inventory.nodes:
        result[node.name] = {**_connection(node.ssh), "vmctl_node": node_vars(inventory, node)}
    for manager in inventory.managers:
        host = result.setdefault(manager.name, _connection(manager.ssh))
        host["vmctl_manager"] = manager_vars(inventory, manager)
    return result


def dynamic_inventory(inventory: Inventory, source: str | None = None) -> dict[str, Any]:
    """Ansible's `--list` answer: `_meta.hostvars`, `all` with the groups as children (and
    `vmctl_inventory_file`, the inventory's path on this machine, when `source` is given), and
    each group's hosts, every group present even when empty."""
    members = {
        NODES: [node.name for node in inventory.nodes],
        DIR_NODES: [node.name for node in inventory.nodes if node.storage.type == "dir"],
        RBD_NODES: [node.name for node in inventory.nodes if node.storage.type == "rbd"],
        MANAGERS: [manager.name for manager in inventory.managers],
    }
    everything: dict[str, Any] = {"children": list(GROUPS)}
    if source is not None:
        everything["vars"] = {"vmctl_inventory_file": source}
    result: dict[str, Any] = {"_meta": {"hostvars": hostvars(inventory)}, "all": everything}
    for group in GROUPS:
        result[group] = {"hosts": members[group]}
    return result


def host(inventory: Inventory, name: str) -> dict[str, Any]:
    """Ansible's `--host NAME` answer: that host's variables, `{}` for a name it does not know."""
    return hostvars(inventory).get(name, {})
