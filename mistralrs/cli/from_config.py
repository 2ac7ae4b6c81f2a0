"""`mistralrs from-config`: run the CLI from a TOML configuration file (not built yet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mistralrs.cli.options import GLOBAL, Options, with_options
from mistralrs.cli.unbuilt import refuse_unbuilt_command


@with_options(GLOBAL)
def from_config(
    file: Annotated[Path, typer.Option("-f", "--file", metavar="PATH", help="TOML configuration file.")],
    *,
    opts: Options,
) -> None:
    """Run the CLI from a TOML configuration file (several models at once, too)."""
    refuse_unbuilt_command("from-config")
