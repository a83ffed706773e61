"""`vmctl monitoring scrape-config`: Prometheus's configuration from inventory.yaml (its nodes and
its `monitoring:` section; docs/monitoring.md)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from vmctl.cli.options import progress, settings
from vmctl.core.errors import ConfigError

app = typer.Typer(
    help="Prometheus: what it scrapes, generated from the inventory.", no_args_is_help=True
)


@app.command("scrape-config")
def scrape_config(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="Write it to this file (replaced whole, never half written) instead of stdout.",
        ),
    ] = None,
) -> None:
    """Print Prometheus's configuration (prometheus.yml): the jobs vmctl-api, vmctl-cloud,
    haproxy, vmctl-watch-ip, node and libvirt (every node of the inventory, label `node`),
    postgres, redis, ceph and prometheus, with the targets of the inventory's `monitoring:`
    section, its intervals, rule files and alertmanagers."""
    from vmctl import wiring
    from vmctl.core import scrape

    current = settings()
    inventory = wiring.load_inventory(current)
    text = scrape.to_yaml(scrape.scrape_config(inventory), source=str(current.inventory))
    if output is None:
        typer.echo(text, nl=False)
        return
    _write(output, text)
    progress(f"wrote {output}")


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically: Prometheus may reload it at any moment."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
    except OSError as exc:
        raise ConfigError(f"--output: cannot write in {directory}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        raise ConfigError(f"--output: cannot write {path}: {exc.strerror}") from exc
