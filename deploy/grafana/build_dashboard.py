#!/usr/bin/env python3
"""Writes deploy/grafana/dashboards/vmctl.json, the vmctl Grafana dashboard (docs/monitoring.md).

The JSON is generated so that its queries read as a list here and stay consistent (datasource,
`$node`, units); edit this file, not the JSON, then run:

    python deploy/grafana/build_dashboard.py           # rewrite the JSON
    python deploy/grafana/build_dashboard.py --check   # exit 1 if the JSON differs from it

Standard library only. The queries use the recording rules of
deploy/prometheus/rules/vmctl-recording.yml where one exists.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "vmctl.json"
# The datasource of provisioning/datasources/prometheus.yml: a fixed uid, so the dashboard
# finds it in every Grafana that is provisioned from this directory.
DATASOURCE = {"type": "prometheus", "uid": "vmctl-prometheus"}
# The node exporter's filesystems that are a node's disks, as in the alerts.
DISKS = 'job="node",node=~"$node",fstype!~"tmpfs|ramfs|squashfs|overlay"'

UP_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "DOWN", "color": "red", "index": 0},
            "1": {"text": "UP", "color": "green", "index": 1},
        },
    }
]
CEPH_HEALTH_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "HEALTH_OK", "color": "green", "index": 0},
            "1": {"text": "HEALTH_WARN", "color": "orange", "index": 1},
            "2": {"text": "HEALTH_ERR", "color": "red", "index": 2},
        },
    }
]


@dataclass
class Panel:
    """One panel: `targets` are (PromQL, legend) pairs."""

    title: str
    description: str
    targets: list[tuple[str, str]]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    width: int = 8
    stacked: bool = False
    max: float | None = None
    warn_at: float | None = None  # a red threshold line
    mappings: list[dict[str, Any]] = field(default_factory=list)


ROWS: list[tuple[str, list[Panel]]] = [
    (
        "Capacity",
        [
            Panel(
                "Node fullness (booked / bookable)",
                "Share of each node's bookable CPUs, memory and disk that vmctl has booked; "
                "at 100% the node takes no more VMs (alert at 90%).",
                [
                    ('node:vmctl_cpus_allocated:ratio{node=~"$node"}', "{{node}} cpu"),
                    ('node:vmctl_memory_allocated:ratio{node=~"$node"}', "{{node}} memory"),
                    ('node:vmctl_disk_allocated:ratio{node=~"$node"}', "{{node}} disk"),
                ],
                unit="percentunit",
                max=1,
                warn_at=0.9,
            ),
            Panel(
                "Pool fullness (vmctl booked, Ceph used)",
                "Shared pools: the disk sizes vmctl booked against the pool's capacity, and "
                "what Ceph reports really used (thin clones use less).",
                [
                    ("pool:vmctl_disk_allocated:ratio", "vmctl {{pool}}"),
                    ("pool:ceph_pool_percent_used:ratio", "ceph {{name}}"),
                ],
                unit="percentunit",
                max=1,
                warn_at=0.85,
            ),
            Panel(
                "Node filesystems free",
                "Free space of each node's filesystems (node exporter): VM disks that are "
                "files grow into it; pages when the trend fills one within 4 hours.",
                [
                    (
                        f"node_filesystem_avail_bytes{{{DISKS}}}"
                        f" / node_filesystem_size_bytes{{{DISKS}}}",
                        "{{node}} {{mountpoint}}",
                    )
                ],
                unit="percentunit",
                max=1,
            ),
            Panel(
                "Host memory used",
                "Memory in use on each node's host, guests included (node exporter): what "
                "is really left, whatever vmctl booked.",
                [
                    (
                        '1 - node_memory_MemAvailable_bytes{job="node",node=~"$node"}'
                        ' / node_memory_MemTotal_bytes{job="node",node=~"$node"}',
                        "{{node}}",
                    )
                ],
                unit="percentunit",
                max=1,
            ),
            Panel(
                "Host CPU busy",
                "Share of each node's host CPU time not idle over 5 minutes (node exporter).",
                [
                    (
                        "1 - avg by (node) (rate(node_cpu_seconds_total"
                        '{job="node",node=~"$node",mode="idle"}[5m]))',
                        "{{node}}",
                    )
                ],
                unit="percentunit",
                max=1,
            ),
        ],
    ),
    (
        "VMs",
        [
            Panel(
                "VMs by state",
                "VMs that PostgreSQL records, by state: creating or deleting ones that stay "
                "are stuck.",
                [('sum by (state) (vmctl_vms{node=~"$node"})', "{{state}}")],
                stacked=True,
                width=6,
            ),
            Panel(
                "VMs by node",
                "VMs that PostgreSQL records on each node, every state.",
                [('sum by (node) (vmctl_vms{node=~"$node"})', "{{node}}")],
                stacked=True,
                width=6,
            ),
            Panel(
                "libvirt domains per node",
                "Running domains that libvirt reports on each node (libvirt exporter): "
                "compare with vmctl's running VMs there.",
                [
                    ('libvirt_domains_number{node=~"$node"}', "{{node}} libvirt"),
                    (
                        'sum by (node) (vmctl_vms{node=~"$node",state="running"})',
                        "{{node}} vmctl running",
                    ),
                ],
                width=6,
            ),
            Panel(
                "VMs waiting for an address",
                "Creating or running VMs without a confirmed address: more than a few for "
                "long means watch-ip does not see or record them.",
                [
                    (
                        'sum by (node) (vmctl_vms_waiting_for_address{node=~"$node"})',
                        "{{node}}",
                    )
                ],
                stacked=True,
                width=6,
            ),
        ],
    ),
    (
        "Creates and deletes",
        [
            Panel(
                "Creates per minute by result",
                "VM creates that ended, per minute over 5 minutes, ok and failed.",
                [("result:vmctl_creates:rate5m * 60", "{{result}}")],
                unit="short",
                stacked=True,
            ),
            Panel(
                "Create duration p50 / p95",
                "How long creates take from request to VM started, over 15 minutes.",
                [
                    ("vmctl:create_duration_seconds:p50_15m", "p50"),
                    ("vmctl:create_duration_seconds:p95_15m", "p95"),
                ],
                unit="s",
            ),
            Panel(
                "Failed creates (share over 15 minutes)",
                "Share of creates that failed over 15 minutes; alerts above 20%.",
                [("vmctl:create_failure:ratio_15m", "failed")],
                unit="percentunit",
                max=1,
                warn_at=0.2,
            ),
            Panel(
                "Create rollbacks per hour",
                "Failed creates undone, per hour: clean, or incomplete when a cleanup step "
                "failed (a node that did not answer: the VM stays deleting until watch-ip or "
                "reconcile finishes it).",
                [
                    (
                        "sum by (outcome) (increase(vmctl_create_rollbacks_total[1h]))",
                        "{{outcome}}",
                    )
                ],
                stacked=True,
            ),
            Panel(
                "Deletes per minute by result",
                "VM deletes that ended, per minute over 5 minutes, ok and failed.",
                [("sum by (result) (rate(vmctl_deletes_total[5m])) * 60", "{{result}}")],
                stacked=True,
            ),
            Panel(
                "Delete duration p50 / p95",
                "How long deletes take, over 15 minutes.",
                [
                    (
                        "histogram_quantile(0.5, sum by (le) "
                        "(rate(vmctl_delete_duration_seconds_bucket[15m])))",
                        "p50",
                    ),
                    (
                        "histogram_quantile(0.95, sum by (le) "
                        "(rate(vmctl_delete_duration_seconds_bucket[15m])))",
                        "p95",
                    ),
                ],
                unit="s",
            ),
        ],
    ),
    (
        "Addresses (watch-ip)",
        [
            Panel(
                "Address delay p50 / p90 (node to record)",
                "From a node showing a VM's address (lease, ARP, agent) to its record: well "
                "under a second when all is well; alerts above 10 s at p90.",
                [
                    ("vmctl:watch_ip_address_delay_seconds:p50_10m", "p50"),
                    ("vmctl:watch_ip_address_delay_seconds:p90_10m", "p90"),
                ],
                unit="s",
                warn_at=10,
            ),
            Panel(
                "Address wait p50 / p90 (creation to record)",
                "From a VM's creation to its address's record: mostly the guest's boot.",
                [
                    ("vmctl:watch_ip_address_wait_seconds:p50_10m", "p50"),
                    ("vmctl:watch_ip_address_wait_seconds:p90_10m", "p90"),
                ],
                unit="s",
            ),
            Panel(
                "Addresses recorded per minute by source",
                "Addresses watch-ip recorded (new or changed), per minute, by where it saw "
                "them: lease, ARP or guest agent.",
                [
                    (
                        "sum by (source) (rate(vmctl_watch_ip_addresses_recorded_total[5m])) * 60",
                        "{{source}}",
                    )
                ],
                stacked=True,
            ),
            Panel(
                "watch-ip per node: connected, following",
                "1 when watch-ip's last look at the node worked, and while it follows the "
                "node's lease file; 0 means that node's addresses are late or missed.",
                [
                    ('vmctl_watch_ip_node_connected{node=~"$node"}', "{{node}} connected"),
                    ('vmctl_watch_ip_node_following{node=~"$node"}', "{{node}} following"),
                ],
                max=1,
            ),
            Panel(
                "watch-ip per node: seconds since last pass",
                "Time since watch-ip last finished a pass over each node's VMs; it grows "
                "when the node or watch-ip is stuck.",
                [
                    (
                        'time() - vmctl_watch_ip_node_last_pass_timestamp_seconds{node=~"$node"}',
                        "{{node}}",
                    )
                ],
                unit="s",
            ),
            Panel(
                "Reconcile drift by kind",
                "Items of drift between PostgreSQL and the nodes found by watch-ip's last "
                "reconcile report, per kind (foreign: not vmctl's, left alone).",
                [("vmctl_watch_ip_reconcile_drift", "{{kind}}")],
                stacked=True,
            ),
        ],
    ),
    (
        "API",
        [
            Panel(
                "API requests by route and status",
                "Requests per second to all vmctl serve replicas, by route template and "
                "HTTP status.",
                [("route_status:vmctl_api_requests:rate5m", "{{status}} {{route}}")],
                unit="reqps",
                stacked=True,
            ),
            Panel(
                "API latency p95 by route",
                "95th percentile of request duration over 5 minutes, per route, all replicas.",
                [("route:vmctl_api_request_duration_seconds:p95_5m", "{{route}}")],
                unit="s",
            ),
            Panel(
                "API requests in flight",
                "Requests being served by each replica now: a pile-up means a slow node or "
                "PostgreSQL.",
                [("sum by (instance) (vmctl_api_requests_in_flight)", "{{instance}}")],
                stacked=True,
            ),
            Panel(
                "API replicas up",
                "Whether Prometheus reaches each vmctl serve replica.",
                [('up{job="vmctl-api"}', "{{instance}}")],
                kind="stat",
                mappings=UP_MAPPINGS,
            ),
            Panel(
                "HAProxy backend servers up",
                "Replicas passing HAProxy's health check (/readyz) per backend: 0 means the "
                "API answers 503 to everyone.",
                [
                    ("haproxy_backend_active_servers", "{{proxy}} active"),
                    ('haproxy_server_status{state="UP"}', "{{proxy}}/{{server}} up"),
                ],
            ),
            Panel(
                "HAProxy requests per second by frontend",
                "HTTP requests per second that reach HAProxy, per frontend (external, "
                "internal, monitoring).",
                [
                    (
                        "sum by (proxy) (rate(haproxy_frontend_http_requests_total[5m]))",
                        "{{proxy}}",
                    )
                ],
                unit="reqps",
                stacked=True,
            ),
        ],
    ),
    (
        "Services",
        [
            Panel(
                "watch-ip up",
                "Whether Prometheus reaches vmctl watch-ip, and whether PostgreSQL answers it.",
                [
                    ('up{job="vmctl-watch-ip"}', "scraped {{instance}}"),
                    ("vmctl_watch_ip_store_up", "PostgreSQL {{instance}}"),
                ],
                kind="stat",
                width=6,
                mappings=UP_MAPPINGS,
            ),
            Panel(
                "PostgreSQL up",
                "Whether the postgres exporter reaches PostgreSQL, vmctl's store.",
                [("pg_up", "{{instance}}")],
                kind="stat",
                width=6,
                mappings=UP_MAPPINGS,
            ),
            Panel(
                "Redis up",
                "Whether the redis exporter reaches Redis (vmctl's cache; it works without).",
                [("redis_up", "{{instance}}")],
                kind="stat",
                width=6,
                mappings=UP_MAPPINGS,
            ),
            Panel(
                "Ceph health",
                "The Ceph cluster's health as its manager reports it (`ceph health detail` "
                "says why it is not OK).",
                [("ceph_health_status", "ceph")],
                kind="stat",
                width=6,
                mappings=CEPH_HEALTH_MAPPINGS,
            ),
            Panel(
                "PostgreSQL connections",
                "Backends connected to each database, and the server's max_connections: "
                "near it, new connections are refused.",
                [
                    (
                        'sum by (datname) (pg_stat_database_numbackends{datname!=""})',
                        "{{datname}}",
                    ),
                    ("max(pg_settings_max_connections)", "max_connections"),
                ],
                width=12,
            ),
            Panel(
                "Redis memory used",
                "Memory Redis uses for vmctl's cache.",
                [("redis_memory_used_bytes", "{{instance}}")],
                unit="bytes",
                width=12,
            ),
        ],
    ),
]


def _field_config(panel: Panel) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if panel.warn_at is not None:
        steps.append({"color": "red", "value": panel.warn_at})
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "min": 0,
        "thresholds": {"mode": "absolute", "steps": steps},
        "mappings": panel.mappings,
    }
    if panel.max is not None:
        defaults["max"] = panel.max
    if panel.kind == "timeseries":
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stacked else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stacked else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if panel.warn_at is not None else "off"},
        }
    else:
        defaults["color"] = {"mode": "thresholds"}
    return {"defaults": defaults, "overrides": []}


def _options(panel: Panel) -> dict[str, Any]:
    if panel.kind == "stat":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        }
    return {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": _field_config(panel),
        "options": _options(panel),
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "editorMode": "code",
                "expr": expr,
                "legendFormat": legend,
                "range": True,
            }
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }


def _node_variable() -> dict[str, Any]:
    query = "label_values(vmctl_vms, node)"
    return {
        "name": "node",
        "label": "Node",
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": query,
        "multi": True,
        "includeAll": True,
        # `.*` rather than the list of every node: nodes that left keep their history.
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "hide": 0,
        "skipUrlSync": False,
        "options": [],
    }


def build() -> dict[str, Any]:
    """The dashboard as a JSON-ready dict."""
    panels: list[dict[str, Any]] = []
    panel_id, y = 1, 0
    for title, row_panels in ROWS:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y, x = panel_id + 1, y + 1, 0
        for panel in row_panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel(panel, panel_id, x, y))
            panel_id, x = panel_id + 1, x + panel.width
        y += 8
    return {
        "uid": "vmctl-overview",
        "title": "vmctl",
        "description": "A vmctl cloud: capacity, VMs, creates and deletes, addresses, the API "
        "and the services it needs (docs/monitoring.md). Generated by "
        "deploy/grafana/build_dashboard.py.",
        "tags": ["vmctl"],
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "30s",
        "schemaVersion": 38,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "weekStart": "",
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": [_node_variable()]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the vmctl Grafana dashboard's JSON.")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the JSON differs from what is generated"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python {__file__}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
