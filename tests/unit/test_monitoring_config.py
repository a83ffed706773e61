"""The monitoring configuration (deploy/prometheus, deploy/grafana; docs/monitoring.md): valid for
promtool and amtool, its rules unit-tested, the dashboard generated and consistent, and the
PromQL helpers of labkit.promql that the lab's tests use to query it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from labkit import promql

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))
ALERTMANAGER = PROMETHEUS / "alertmanager.yml"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "vmctl.json"
BUILD_DASHBOARD = GRAFANA / "build_dashboard.py"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "vmctl.yml"

# The scrape jobs of docs/monitoring.md: the only ones a rule or a panel may select.
JOBS = {
    "vmctl-api",
    "vmctl-cloud",
    "vmctl-watch-ip",
    "haproxy",
    "node",
    "libvirt",
    "postgres",
    "redis",
    "ceph",
    "prometheus",
}
# Metrics whose series carry a `node` label: the dashboard filters them with `$node`.
NODE_LABELLED = re.compile(r"^(vmctl_node_|vmctl_vms|vmctl_watch_ip_node_|node_|libvirt_|node:)")


def tool(name: str) -> str:
    """The path of promtool or amtool; the test fails (not skips) without them."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run lab/setup-host.sh (Debian's prometheus and "
            "prometheus-alertmanager packages bring promtool and amtool)"
        )
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=REPO)


def rules() -> list[promql.Rule]:
    return promql.rule_expressions(RULE_FILES)


def dashboard() -> dict:  # type: ignore[type-arg]
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


# -- Prometheus rules -----------------------------------------------------------------------


def test_the_rule_files_are_there() -> None:
    names = {path.name for path in RULE_FILES}
    assert {"vmctl-recording.yml", "vmctl-alerts.yml"} <= names
    assert RULE_TESTS, "no promtool unit tests in deploy/prometheus/tests"


def test_rules_pass_promtool_check_rules() -> None:
    proc = run(tool("promtool"), "check", "rules", *RULE_FILES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_pass_their_promtool_unit_tests() -> None:
    proc = run(tool("promtool"), "test", "rules", *RULE_TESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    exprs_tested: list[str] = []
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
            exprs_tested += [check["expr"] for check in case.get("promql_expr_test", [])]
    alerts = {rule.name for rule in rules() if rule.kind == "alert"}
    assert alerts - fires == set(), "alerts never seen firing"
    assert alerts - quiet == set(), "alerts never seen quiet"
    recorded = {rule.name for rule in rules() if rule.kind == "record"}
    used = {sel.split("{")[0] for expr in exprs_tested for sel in promql.selectors(expr)}
    assert recorded - used == set(), "recording rules without a promql_expr_test"


def test_alerts_say_how_long_how_bad_and_what() -> None:
    for rule in rules():
        if rule.kind != "alert":
            continue
        assert re.fullmatch(r"Vmctl[A-Z][A-Za-z]+", rule.name), rule.name
        assert rule.for_, f"{rule.name}: no for:"
        assert rule.labels.get("severity") in ("page", "warning"), rule.name
        assert rule.annotations.get("summary"), rule.name
        assert rule.annotations.get("description"), rule.name
        # an alert on series of a node, a pool or a replica names it
        text = rule.annotations["summary"] + rule.annotations["description"]
        names = _names(rule.expr)
        if any(NODE_LABELLED.match(name) for name in names):
            assert "$labels.node" in text, rule.name
        if any(name.startswith("pool:") for name in names):
            assert "$labels.pool" in text or "$labels.name" in text, rule.name
        if names and set(names) <= {"up"}:
            assert "$labels.instance" in text, rule.name


def _names(expr: str) -> list[str]:
    return [sel.split("{")[0] for sel in promql.selectors(expr)]


def test_the_api_replica_alert_is_the_documented_one() -> None:
    (replica,) = [rule for rule in rules() if rule.name == "VmctlApiReplicaDown"]
    assert promql.selectors(replica.expr) == ['up{job="vmctl-api"}']
    assert "$labels.instance" in replica.annotations["summary"]


def test_recording_rules_are_named_level_metric_operations() -> None:
    for rule in rules():
        if rule.kind == "record":
            assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule.name), rule.name


def test_rules_and_panels_select_documented_jobs_and_recorded_names() -> None:
    recorded = {rule.name for rule in rules() if rule.kind == "record"}
    exprs = [rule.expr for rule in rules()]
    exprs += [expr for panel in promql.dashboard_panels(DASHBOARD) for expr in panel.exprs]
    for expr in exprs:
        for job in re.findall(r'job=~?"([^"]*)"', expr):
            assert set(job.split("|")) <= JOBS, expr
        for name in _names(promql.grafana_to_promql(expr)):
            if ":" in name:
                assert name in recorded, f"{name} is not recorded ({expr})"


def test_a_prometheus_config_loading_the_rules_passes_promtool(tmp_path: Path) -> None:
    config = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": [str(path) for path in RULE_FILES],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]},
        "scrape_configs": [
            {"job_name": "vmctl-api", "static_configs": [{"targets": ["127.0.0.1:18081"]}]}
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    proc = run(tool("promtool"), "check", "config", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rule_file in RULE_FILES:
        assert str(rule_file) in proc.stdout, proc.stdout  # it read the rules too


# -- Alertmanager ---------------------------------------------------------------------------


def test_alertmanager_config_passes_amtool() -> None:
    proc = run(tool("amtool"), "check-config", ALERTMANAGER)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=page", "alertname=VmctlPostgresDown"], "vmctl-page"),
        (["severity=warning", "alertname=VmctlNodeNearlyFull", "node=node1"], "vmctl-warning"),
    ],
)
def test_alertmanager_routes_pages_to_their_own_receiver(labels: list[str], receiver: str) -> None:
    proc = run(tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == [receiver]


def test_alertmanager_inhibits_a_nodes_warnings_while_it_pages() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    receivers = {receiver["name"] for receiver in config["receivers"]}
    assert receivers == {"vmctl-page", "vmctl-warning"}
    assert any(
        'severity="page"' in rule["source_matchers"]
        and rule["target_matchers"] == ['severity="warning"']
        and rule["equal"] == ["node"]
        for rule in config["inhibit_rules"]
    )
    severities = {rule.labels["severity"] for rule in rules() if rule.kind == "alert"}
    assert severities == {"page", "warning"}


# -- Grafana --------------------------------------------------------------------------------


def test_the_dashboard_is_what_its_generator_writes() -> None:
    # -I -S: no site-packages, so the generator needs nothing beyond the standard library
    proc = run(sys.executable, "-I", "-S", BUILD_DASHBOARD, "--check")
    assert proc.returncode == 0, proc.stderr


def test_the_dashboard_uses_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    (datasource,) = provisioned
    assert datasource["type"] == "prometheus"
    assert datasource["url"] in ("$PROMETHEUS_URL", "${PROMETHEUS_URL}")
    uid = datasource["uid"]
    board = dashboard()
    assert 30 <= board["schemaVersion"] <= 40
    users = [panel for panel in board["panels"] if panel["type"] != "row"]
    users += [target for panel in users for target in panel["targets"]]
    users += board["templating"]["list"]
    assert {user["datasource"]["uid"] for user in users} == {uid}


def test_the_dashboards_provider_reads_the_dashboards_directory() -> None:
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("$")  # where the operator puts the directory
    assert DASHBOARD.parent.name == "dashboards"


def test_the_dashboard_has_a_multi_node_variable() -> None:
    (variable,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "node"]
    assert variable["type"] == "query"
    assert variable["definition"] == "label_values(vmctl_vms, node)"
    assert variable["multi"] is True and variable["includeAll"] is True


def test_every_panel_is_described_and_queries_prometheus() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    ids += [inner["id"] for panel in board["panels"] for inner in panel.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    panels = promql.dashboard_panels(DASHBOARD)
    assert len(panels) >= 20
    for panel in panels:
        assert panel.description.strip() and "\n" not in panel.description, panel.title
        assert panel.exprs, panel.title
        for expr in panel.exprs:
            assert promql.selectors(promql.grafana_to_promql(expr)), expr


def test_node_labelled_series_follow_the_node_variable() -> None:
    for panel in promql.dashboard_panels(DASHBOARD):
        for expr in panel.exprs:
            for selector in promql.selectors(expr):
                if NODE_LABELLED.match(selector) and not selector.startswith("node_cpu"):
                    assert 'node=~"$node"' in selector, (panel.title, selector)


def test_every_query_and_selector_parses(tmp_path: Path) -> None:
    """promtool parses each dashboard query, and each selector of every query and rule, as the
    lab's tests will send them to Prometheus."""
    exprs = [
        promql.grafana_to_promql(expr)
        for panel in promql.dashboard_panels(DASHBOARD)
        for expr in panel.exprs
    ]
    exprs += [rule.expr for rule in rules()]
    exprs += [selector for expr in exprs for selector in promql.selectors(expr)]
    records = [{"record": f"check:query:n{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": records}]}))
    proc = run(tool("promtool"), "check", "rules", "--lint=none", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- labkit.promql --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", ["up"]),
        ('up{job="vmctl-api"} == 0', ['up{job="vmctl-api"}']),
        (
            'sum by (node, state) (rate(vmctl_creates_total{result="failed"}[15m]))',
            ['vmctl_creates_total{result="failed"}'],
        ),
        ("sum(rate(x[5m])) without (instance)", ["x"]),
        (
            "max by (pool_id) (ceph_pool_percent_used) * on (pool_id) group_left (name) "
            "max by (pool_id, name) (ceph_pool_metadata)",
            ["ceph_pool_percent_used", "ceph_pool_metadata"],
        ),
        ("a / ignoring (le) group_right b", ["a", "b"]),
        (
            'label_replace(node:vmctl_cpus_allocated:ratio > 0.9, "resource", "cpu", "", "")',
            ["node:vmctl_cpus_allocated:ratio"],
        ),
        ('up{job="w"} == 0 or absent(up{job="w"})', ['up{job="w"}', 'up{job="w"}']),
        (
            'predict_linear(node_filesystem_avail_bytes{fstype!~"tmpfs|ramfs"}[6h], 4 * 3600) < 0',
            ['node_filesystem_avail_bytes{fstype!~"tmpfs|ramfs"}'],
        ),
        ("rate(x[5m] offset 1h) > bool 1e3", ["x"]),
        ("max_over_time(deriv(x[10m])[1h:5m])", ["x"]),
        ('{__name__="up", job="a"}', ['{__name__="up", job="a"}']),
        ('x{a="}{", b=~"[a-z]+"}', ['x{a="}{", b=~"[a-z]+"}']),
        ("SUM BY (a) (x) AND ON () y", ["x", "y"]),
        ("topk(3, x) unless y @ end()", ["x", "y"]),
        (
            "time() - vmctl_watch_ip_node_last_pass_timestamp_seconds",
            ["vmctl_watch_ip_node_last_pass_timestamp_seconds"],
        ),
        (
            'histogram_quantile(0.9, sum by (le) (rate(a_bucket{node=~"$node"}[$__interval])))',
            ['a_bucket{node=~"$node"}'],
        ),
        ("vector(1) + scalar(x)", ["x"]),
        ('count_values("v", x) # a comment: y\n+ z', ["x", "z"]),
    ],
)
def test_selectors(expr: str, expected: list[str]) -> None:
    assert promql.selectors(expr) == expected


def test_grafana_variables_become_promql() -> None:
    expr = 'rate(x{node=~"$node",a=~"${a}",b=~"${b:regex}"}[$__rate_interval])'
    assert promql.grafana_to_promql(expr) == 'rate(x{node=~".*",a=~".*",b=~".*"}[1m])'
    assert promql.grafana_to_promql("up") == "up"


def test_lab_rules_cap_every_for(tmp_path: Path) -> None:
    original = (PROMETHEUS / "rules" / "vmctl-alerts.yml").read_text()
    capped = promql.lab_rules(original)
    path = tmp_path / "vmctl-alerts.yml"
    path.write_text(capped)
    alerts = promql.rule_expressions([path])
    assert alerts and all(promql.duration_seconds(a.for_) <= 5 for a in alerts)
    before = promql.rule_expressions([PROMETHEUS / "rules" / "vmctl-alerts.yml"])
    assert [(a.name, a.expr, a.annotations) for a in alerts] == [
        (a.name, a.expr, a.annotations) for a in before
    ]
    assert capped.count("\n") == original.count("\n")  # comments and layout stay
    proc = run(tool("promtool"), "check", "rules", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lab_rules_keep_shorter_for_and_take_another_cap() -> None:
    text = "rules:\n  - alert: A\n    for: 2s\n  - alert: B\n    for: '1h30m'\n  - alert: C\n"
    assert promql.lab_rules(text) == text.replace("'1h30m'", "5s")
    assert promql.lab_rules(text, cap="1m") == text.replace("'1h30m'", "1m")
    assert promql.lab_rules("keep_firing_for: 1h\n") == "keep_firing_for: 1h\n"


@pytest.mark.parametrize(
    ("text", "seconds"), [("5s", 5), ("10m", 600), ("1h30m", 5400), ("500ms", 0.5), ("1d", 86400)]
)
def test_duration_seconds(text: str, seconds: float) -> None:
    assert promql.duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "1x", "m5", "5m 3s"])
def test_duration_seconds_refuses_what_prometheus_would(text: str) -> None:
    with pytest.raises(ValueError):
        promql.duration_seconds(text)
