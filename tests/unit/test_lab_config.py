import ipaddress

import pytest
from labkit import config, inventory

pytestmark = pytest.mark.unit


def test_node_addresses_are_distinct_and_inside_the_lab_range() -> None:
    lab = config.lab_network()
    nodes = config.nodes(9)
    subnets = [ipaddress.IPv4Network(n.guest_subnet) for n in nodes]
    assert len({n.address for n in nodes}) == 9
    assert all(ipaddress.IPv4Address(n.address) in lab for n in nodes)
    assert all(s.subnet_of(lab) for s in subnets)  # type: ignore[arg-type]
    assert all(not a.overlaps(b) for i, a in enumerate(subnets) for b in subnets[i + 1 :])
    bridge_net = ipaddress.IPv4Network(f"{config.bridge_address()}/24", strict=False)
    assert not any(s.overlaps(bridge_net) for s in subnets)
    for n in nodes:
        start, end = n.dhcp_range
        assert ipaddress.IPv4Address(start) in ipaddress.IPv4Network(n.guest_subnet)
        assert ipaddress.IPv4Address(end) in ipaddress.IPv4Network(n.guest_subnet)


def test_generated_inventory_lists_every_node() -> None:
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load(inventory.render(config.nodes(2)))
    assert [n["name"] for n in data["nodes"]] == ["node1", "node2"]
    assert data["nodes"][0]["ssh"]["host"] == config.nodes(1)[0].address
    assert data["nodes"][1]["network"]["subnet"] == config.nodes(2)[1].guest_subnet
    assert data["images"]["debian-12"]["default_user"] == "debian"


def test_generated_inventory_has_the_monitoring_section() -> None:
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load(inventory.render(config.nodes(2)))
    monitoring = data["monitoring"]
    assert monitoring["node_exporter_port"] == config.NODE_EXPORTER_PORT
    assert monitoring["watch_ip"] == [f"127.0.0.1:{config.WATCH_IP_METRICS_PORT}"]
    assert monitoring["haproxy"] == f"127.0.0.1:{config.HAPROXY_MONITORING_PORT}"
    assert monitoring["scrape_interval"] == "2s"


def test_bare_hosts_collide_with_no_node_and_stay_inside_the_lab() -> None:
    from labkit import bare

    lab = config.lab_network()
    nodes, hosts = config.nodes(9), bare.hosts(9)
    addresses = [n.address for n in nodes] + [h.address for h in hosts]
    assert len(set(addresses)) == 18 and config.bridge_address() not in addresses
    assert all(ipaddress.IPv4Address(a) in lab for a in addresses)
    subnets = [ipaddress.IPv4Network(x.guest_subnet) for x in [*nodes, *hosts]]
    assert all(s.subnet_of(lab) for s in subnets)  # type: ignore[arg-type]
    assert all(not a.overlaps(b) for i, a in enumerate(subnets) for b in subnets[i + 1 :])
    assert len({h.netns for h in hosts} | {n.netns for n in nodes}) == 18
    for h in hosts:
        subnet = ipaddress.IPv4Network(h.guest_subnet)
        low, high = (ipaddress.IPv4Address(a) for a in h.reserved_range)
        start, end = (ipaddress.IPv4Address(a) for a in h.dhcp_range)
        assert low in subnet and end in subnet and high < start  # reservations below DHCP's range
