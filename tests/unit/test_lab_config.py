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
