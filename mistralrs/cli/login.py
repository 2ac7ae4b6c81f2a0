"""`mistralrs login`: save a Hugging Face token (not built yet: exits 2 naming it)."""

from __future__ import annotations

from typing import Annotated

import typer

from mistralrs.cli.options import GLOBAL, Options, with_options
from mistralrs.cli.unbuilt import refuse_unbuilt_command


@with_options(GLOBAL)
def login(
    token: Annotated[str | None, typer.Option(
        "--token", metavar="TOKEN", help="Provide the token directly (non-interactive).")] = None,
    *,
    opts: Options,
) -> None:
    """Authenticate with the Hugging Face Hub by saving your token to the local cache."""
    refuse_unbuilt_command("login")
