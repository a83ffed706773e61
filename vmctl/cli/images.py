"""`vmctl images import|list`: base images where each node's storage needs them (a qcow2 file
on every node with dir storage, once into each RBD pool), checked, recorded, never overwritten
while VMs use them (docs/images.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vmctl.cli.complete import node_names
from vmctl.cli.options import Format, output_options, settings
from vmctl.cli.output import emit
from vmctl.core.errors import ExitStatus, InvalidInput

if TYPE_CHECKING:
    from vmctl.services.images import ImageService, Outcome

app = typer.Typer(
    help="Base images: put them where each node's storage needs them; see where they are.",
    no_args_is_help=True,
)

IMPORT_COLUMNS = [
    ("image", "IMAGE"),
    ("where", "WHERE"),
    ("result", "RESULT"),
    ("sha256", "SHA256"),
    ("size_bytes", "BYTES"),
]
LIST_COLUMNS = [
    ("image", "IMAGE"),
    ("where", "WHERE"),
    ("present", "PRESENT"),
    ("sha256", "SHA256 (RECORDED)"),
    ("imported_at", "IMPORTED (UTC)"),
    ("used_by", "USED BY"),
]


def _service(quiet: bool = False) -> ImageService:
    from vmctl import wiring

    return wiring.image_service(settings(), quiet=quiet)


def _table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells for people: present yes/no/unknown, the first 16 digits of a sha256, VM names."""
    present = {True: "yes", False: "no", None: "unknown"}
    return [
        {
            **row,
            "present": present[row.get("present")],
            "sha256": row["sha256"][:16] if row.get("sha256") else None,
            "used_by": ", ".join(row.get("used_by") or []) or None,
        }
        for row in rows
    ]


def _finish(outcome: Outcome, columns: list[tuple[str, str]], fmt: Format) -> None:
    emit(_table(outcome.rows) if fmt is Format.table else outcome.rows, columns, fmt)
    for node, why in sorted(outcome.unreachable.items()):
        print(f"vmctl: error: node {node} did not answer: {why}", file=sys.stderr)
    if outcome.unreachable:
        raise typer.Exit(ExitStatus.UNAVAILABLE)


@app.command("import")
@output_options
def images_import(
    name: Annotated[str, typer.Argument(help="An image of inventory.yaml.")],
    file: Annotated[Path, typer.Argument(help="The image file on this machine: qcow2 (or raw).")],
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            help="Only this node (for a node on RBD: its pool).",
            autocompletion=node_names,
        ),
    ] = None,
    all_nodes: Annotated[
        bool,
        typer.Option("--all", help="Every node: the default when --node is not given."),
    ] = False,
    sha256: Annotated[
        str | None,
        typer.Option("--sha256", help="The file's expected sha256: refused (exit 2) otherwise."),
    ] = None,
    *,
    fmt: Format,
) -> None:
    """Put a base image where every node's storage needs it (--all, the default) or one node's:
    a qcow2 file at the image's path on each node with dir storage, an RBD image NAME with
    snapshot NAME@base once per pool. The sha256 of what each node received is checked; an
    image that VMs use (overlays, clones) is never overwritten (exit 2, naming them); a
    location that has the same bytes already is left alone. Exit 6: a node did not answer."""
    if node is not None and all_nodes:
        raise InvalidInput("--node", "give --node or --all, not both")
    outcome = _service().import_image(name, file, node=node, sha256=sha256)
    _finish(outcome, IMPORT_COLUMNS, fmt)


@app.command("list")
@output_options
def images_list(*, fmt: Format) -> None:
    """Each image of the inventory in each location: whether it is there (asked of the nodes),
    its recorded import, and the VMs that use it. Exit 6: a node did not answer."""
    _finish(_service(quiet=True).list_images(), LIST_COLUMNS, fmt)
