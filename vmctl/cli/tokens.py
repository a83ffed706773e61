"""`vmctl token create|list|revoke`: bearer tokens of the HTTP API (one project each)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from vmctl.cli.options import Format, output_options, progress, settings
from vmctl.cli.output import TOKEN_COLUMNS, emit

if TYPE_CHECKING:
    from vmctl.services.tokens import TokenService

app = typer.Typer(help="Bearer tokens of the HTTP API (one project each).", no_args_is_help=True)


def _tokens() -> TokenService:
    from vmctl import wiring

    return wiring.token_service(settings())


@app.command("create")
def token_create(
    project: Annotated[str, typer.Option(help="The project whose VMs the token sees.")],
    name: Annotated[str, typer.Option(help="What the token is for (a note).")] = "",
) -> None:
    """Make a token; prints it once on stdout (only its SHA-256 is kept)."""
    token_id, token = _tokens().create(project, name)
    progress(f"token {token_id} for project {project}; it is not shown again")
    typer.echo(token)


@app.command("list")
@output_options
def token_list(*, fmt: Format) -> None:
    """The tokens (never their secrets)."""
    emit(_tokens().list(), TOKEN_COLUMNS, fmt)


@app.command("revoke")
def token_revoke(token_id: Annotated[int, typer.Argument(help="The token's ID.")]) -> None:
    """Revoke a token: it stops working at once."""
    _tokens().revoke(token_id)
    progress(f"token {token_id} revoked")
