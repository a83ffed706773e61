"""The lab's Ceph cluster: pure parts (configs, libvirt secret, status summary)."""

import configparser
import ipaddress
from pathlib import Path

import pytest
from labkit import ceph, config

pytestmark = pytest.mark.unit

FSID = "0b6f1a52-1111-4c55-9a8e-7a6c2f1d0b11"


def _parse(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def test_cluster_conf_keeps_everything_under_one_directory(tmp_path: Path) -> None:
    conf = _parse(ceph.render_conf(FSID, tmp_path, config.bridge_address()))
    g = conf["global"]
    assert g["fsid"] == FSID
    assert g["osd_objectstore"] == "memstore"
    assert g["osd_pool_default_size"] == "1" and g["mon_allow_pool_size_one"] == "true"
    for key in ("auth_cluster_required", "auth_service_required", "auth_client_required"):
        assert g[key] == "cephx"
    paths = [
        v
        for k, v in g.items()
        if k.endswith(("_dir", "_data", "_file", "_socket")) and "=" not in v
    ]
    assert len(paths) >= 8
    assert all(p.startswith(f"{tmp_path}/") for p in paths), paths
    # the monitor's cluster and audit logs too (by default in /var/log/ceph)
    channels = g["mon_cluster_log_file"].split()
    assert all(c.split("=", 1)[1].startswith(f"{tmp_path}/log/") for c in channels), channels
    # daemons find their keyrings in their data directories: no global keyring
    assert "keyring" not in g
    assert conf["client"]["log_file"] == "" and conf["client"]["admin_socket"] == ""
    assert conf["client.admin"]["keyring"] == f"{tmp_path}/ceph.client.admin.keyring"
    assert conf["client.libvirt"]["keyring"] == f"{tmp_path}/ceph.client.libvirt.keyring"


def test_monitor_is_on_the_lab_bridge() -> None:
    bridge = config.bridge_address()
    assert ceph.mon_host() == f"[v2:{bridge}:3300,v1:{bridge}:6789]"
    assert ceph.monitor() == f"{bridge}:6789"
    assert ipaddress.IPv4Address(bridge) in config.lab_network()
    conf = _parse(ceph.render_conf(FSID, Path("/x"), bridge))
    assert conf["global"]["public_addr"] == bridge
    assert conf["global"]["mon_host"] == ceph.mon_host()


def test_client_conf_has_no_admin_key_and_cephx_on() -> None:
    conf = _parse(ceph.render_client_conf(FSID))
    assert conf["global"]["mon_host"] == ceph.mon_host()
    assert conf["global"]["auth_client_required"] == "cephx"
    assert "keyring" not in conf["global"]  # the default /etc/ceph/ceph.$name.keyring is found
    assert ceph.render_keyring("client.libvirt", "QUJD") == "[client.libvirt]\n\tkey = QUJD\n"


def test_secret_xml_is_a_ceph_usage_secret_with_the_fixed_uuid() -> None:
    xml = ceph.secret_xml()
    assert f"<uuid>{ceph.SECRET_UUID}</uuid>" in xml
    assert "<usage type='ceph'>" in xml and "<name>client.libvirt secret</name>" in xml
    assert "private='no'" in xml  # readable by root on the node (idempotent up checks it)


def test_summarize_status() -> None:
    health = {"status": "HEALTH_WARN", "checks": {"PG_AVAILABILITY": {}, "OSD_DOWN": {}}}
    dump = {
        "require_min_compat_client": "mimic",
        "pools": [
            {"pool_name": "device_health_metrics", "size": 1},
            {"pool_name": "vms", "size": 1},
        ],
        "osds": [{"osd": 0, "up": 1, "in": 1}, {"osd": 1, "up": 0, "in": 1}],
    }
    assert ceph.summarize(health, dump) == {
        "health": "HEALTH_WARN",
        "checks": ["OSD_DOWN", "PG_AVAILABILITY"],
        "pool": "vms",
        "pool_size": 1,
        "osds": {"total": 2, "up": 1, "in": 2},
        "require_min_compat_client": "mimic",
    }
    empty = ceph.summarize({"status": "HEALTH_OK"}, {"pools": [], "osds": []})
    assert empty["pool"] is None and empty["pool_size"] is None and empty["checks"] == []


def test_ready_needs_health_ok_every_osd_up_and_every_pg_active() -> None:
    def status(health: str, *states: tuple[str, int]) -> dict[str, object]:
        pgs = [{"state_name": n, "count": c} for n, c in states]
        return {
            "health": {"status": health},
            "pgmap": {"pgs_by_state": pgs, "num_pgs": sum(c for _, c in states)},
            "osdmap": {"num_osds": 2, "num_up_osds": 2, "num_in_osds": 2},
        }

    assert ceph.ready(status("HEALTH_OK", ("active+clean", 33)))
    # HEALTH_OK is reported while a new pool's PG is still peering: not ready yet
    assert not ceph.ready(status("HEALTH_OK", ("active+clean", 32), ("creating+peering", 1)))
    assert not ceph.ready(status("HEALTH_WARN", ("active+clean", 33)))
    assert not ceph.ready(status("HEALTH_OK"))  # no PGs: the pool is not there yet
    restarted = status("HEALTH_OK", ("active+clean", 33))
    restarted["osdmap"] = {"num_osds": 2, "num_up_osds": 1, "num_in_osds": 2}
    assert not ceph.ready(restarted)  # an OSD restarted and not yet up
