"""docs/monitoring.md's pictures: the Grafana dashboard's panels, drawn from the same queries sent
to the lab's Prometheus, over a window in which this script creates VMs (waiting for their
addresses), makes one create fail, and deletes them.

Grafana is not packaged for Debian 12, so each panel's queries (deploy/grafana/dashboards/
vmctl.json, Grafana variables replaced as lab/labkit/promql.py does) go to Prometheus'
/api/v1/query_range and are plotted with matplotlib, one PNG per dashboard row, into
docs/monitoring/. The list of panels with what each tells the operator is rewritten between the
markers in docs/monitoring.md.

    eval "$(lab/lab env)"; .venv/bin/python bench/monitoring_plots.py --vms 2
    .venv/bin/python bench/monitoring_plots.py --no-workload --minutes 15   # plots only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lab"))
from labkit import inventory, promql  # noqa: E402

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "vmctl.json"
OUT = REPO / "docs" / "monitoring"
DOC = REPO / "docs" / "monitoring.md"
BEGIN, END = "<!-- panels:begin -->", "<!-- panels:end -->"
VMCTL = str(REPO / ".venv" / "bin" / "vmctl")


def vmctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [VMCTL, *args], env=env or dict(os.environ), capture_output=True, text=True, timeout=900
    )
    print(f"vmctl {' '.join(args)}: exit {done.returncode}", file=sys.stderr)
    return done


def workload(count: int) -> None:
    """``count`` VMs created at once (waited for their addresses), one create that fails on its
    node, then the deletes."""
    suffix = secrets.token_hex(3)
    names = [f"plot-{suffix}-{i}" for i in range(count)]
    try:
        wait = ("--ram", "384", "--disk", "1", "--wait-for", "ip", "--timeout", "600")
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda n: vmctl("create", n, *wait), names))
        text = Path(os.environ["VMCTL_INVENTORY"]).read_text()
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as broken:
            broken.write(inventory.with_missing_image(text))
            broken.flush()
            env = {**os.environ, "VMCTL_INVENTORY": broken.name}
            vmctl("create", f"plot-{suffix}-fail", "--image", "missing", env=env)
        time.sleep(30)  # the VMs run a while: the graphs show them
    finally:
        for name in names:
            vmctl("delete", name, "--yes")


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict]:  # type: ignore[type-arg]
    params = {"query": expr, "start": start, "end": end, "step": step}
    url = f"{base}/api/v1/query_range?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=60) as response:
        body = json.load(response)
    return list(body["data"]["result"]) if body.get("status") == "success" else []


def rows(dashboard: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:  # type: ignore[type-arg]
    """The dashboard's rows with their panels, in order (those before any row: 'Overview')."""
    grouped: list[tuple[str, list[dict[str, Any]]]] = [("Overview", [])]
    for item in dashboard["panels"]:
        if item.get("type") == "row":
            grouped.append((item.get("title", ""), list(item.get("panels", []))))
        else:
            grouped[-1][1].append(item)
    return [(title, panels) for title, panels in grouped if panels]


def label_of(metric: dict[str, str], legend: str) -> str:
    if legend:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), legend)
    shown = {k: v for k, v in metric.items() if k not in ("__name__", "job", "instance")}
    return ",".join(f"{k}={v}" for k, v in shown.items()) or metric.get("__name__", "value")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def draw(base: str, start: float, end: float) -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    step = max(5.0, (end - start) / 300)
    lines = []
    for row_title, panels in rows(dashboard):
        cols = 3
        count = len(panels)
        fig, axes = plt.subplots(
            math.ceil(count / cols), cols, figsize=(15, 3.2 * math.ceil(count / cols)),
            squeeze=False,
        )  # fmt: skip
        for ax in axes.flat[count:]:
            ax.axis("off")
        for ax, panel in zip(axes.flat, panels, strict=False):
            series = 0
            for target in panel.get("targets", []):
                expr = promql.grafana_to_promql(target.get("expr", ""))
                for result in query_range(base, expr, start, end, step):
                    xs = [(float(t) - start) / 60 for t, _ in result["values"]]
                    ys = [float(v) for _, v in result["values"]]
                    ax.plot(
                        xs, ys, label=label_of(result["metric"], target.get("legendFormat", ""))
                    )
                    series += 1
            ax.set_title(panel.get("title", ""), fontsize=9)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("minutes", fontsize=7)
            if 0 < series <= 8:
                ax.legend(fontsize=6, loc="upper left")
            if series == 0:
                ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
        fig.suptitle(row_title)
        fig.tight_layout()
        image = OUT / f"{slug(row_title)}.png"
        fig.savefig(image, dpi=72)
        plt.close(fig)
        print(f"wrote {image.relative_to(REPO)}", file=sys.stderr)
        lines += [f"### {row_title}", "", f"![{row_title}](monitoring/{image.name})", ""]
        lines += [f"- **{p.get('title', '')}**: {p.get('description', '')}" for p in panels]
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=2, help="VMs the workload creates")
    parser.add_argument("--no-workload", action="store_true", help="only draw the last minutes")
    parser.add_argument("--minutes", type=float, default=10, help="window with --no-workload")
    parser.add_argument("--prometheus", default=os.environ.get("VMCTL_LAB_PROMETHEUS_URL", ""))
    args = parser.parse_args()
    if not args.prometheus:
        parser.error('no Prometheus: eval "$(lab/lab env)" first, or --prometheus URL')
    if args.no_workload:
        end = time.time()
        start = end - 60 * args.minutes
    else:
        start = time.time() - 60
        workload(args.vms)
        time.sleep(10)  # the last scrapes
        end = time.time()
    lines = draw(args.prometheus, start, end)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))
    text = DOC.read_text()
    section = "\n".join(
        [BEGIN, f"_Drawn {when} by `bench/monitoring_plots.py` from the lab's Prometheus._", "",
         *lines, END]
    )  # fmt: skip
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n## The dashboard, drawn from the lab\n\n" + section + "\n"
    DOC.write_text(text)
    print(f"updated {DOC.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
