"""`mistralrs cache list|delete`: manage the Hugging Face model cache (not built yet)."""

from __future__ import annotations

from typing import Annotated

import typer

from mistralrs.cli.options import GLOBAL, Options, with_options
from mistralrs.cli.unbuilt import refuse_unbuilt_command

cache_app = typer.Typer(
    name="cache",
    help="Manage the Hugging Face model cache.",
    no_args_is_help=True,
    add_completion=False,
)


@cache_app.command("list")
@with_options(GLOBAL)
def list_models(*, opts: Options) -> None:
    """List all cached models with their sizes and last used times."""
    refuse_unbuilt_command("cache")


@cache_app.command("delete")
@with_options(GLOBAL)
def delete_model(
    model_id: Annotated[str, typer.Option("-m", "--model-id", metavar="ID", help="The model to delete.")],
    *,
    opts: Options,
) -> None:
    """Delete a model from the cache."""
    refuse_unbuilt_command("cache")
