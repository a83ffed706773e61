"""The Patroni configuration `lab/lab up --ha` writes (pure rendering)."""

import json

import pytest
from labkit import config, ha
from labkit.inventory import render as inventory_render

pytestmark = pytest.mark.unit

PASSWORDS = {"postgres": "su-pw", "replicator": "rep-pw"}


def test_each_member_has_its_own_ports_and_directory_on_loopback() -> None:
    confs = [ha.patroni_config(m, PASSWORDS) for m in ha.MEMBERS]
    assert [c["name"] for c in confs] == ["pg1", "pg2"]
    pg = [c["postgresql"] for c in confs]
    assert len({p["listen"] for p in pg}) == 2  # type: ignore[index]
    assert all(p["listen"].startswith("127.0.0.1:") for p in pg)  # type: ignore[index]
    assert all(str(p["data_dir"]).startswith(str(ha.HA_DIR)) for p in pg)  # type: ignore[index]
    assert all(p["bin_dir"] == str(config.PG_BIN) for p in pg)  # type: ignore[index]
    rest = {c["restapi"]["listen"] for c in confs}  # type: ignore[index]
    assert len(rest) == 2
    assert all(c["etcd3"] == {"host": f"127.0.0.1:{ha.ETCD_CLIENT_PORT}"} for c in confs)


def test_failover_is_quick_and_loses_no_acknowledged_commit() -> None:
    dcs = ha.patroni_config(ha.MEMBERS[0], PASSWORDS)["bootstrap"]["dcs"]  # type: ignore[index]
    # Patroni's rule: loop_wait + 2 * retry_timeout <= ttl
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"] <= 10
    assert dcs["synchronous_mode"] is True
    assert dcs["postgresql"]["use_pg_rewind"] is True


def test_the_config_is_json_that_patroni_reads_as_yaml() -> None:
    text = json.dumps(ha.patroni_config(ha.MEMBERS[1], PASSWORDS))
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(text)["postgresql"]["authentication"]["replication"] == {
        "username": "replicator",
        "password": "rep-pw",
    }


def test_the_ha_inventory_takes_only_the_top_of_each_nodes_reserved_addresses() -> None:
    text = inventory_render(config.nodes(2))
    ha_text = ha.inventory(text)
    for node in config.nodes(2):
        net = node.guest_subnet.rsplit(".", 1)[0]
        assert ha_text.count(f"addresses: {{first: {net}.90, last: {net}.99}}") == 1
    assert ha_text.replace(".90, last", ".10, last") == text  # nothing else changed
