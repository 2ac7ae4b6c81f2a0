"""`mistralrs doctor`: system diagnostics (not built yet: exits 2 naming it)."""

from __future__ import annotations

from typing import Annotated

import typer

from mistralrs.cli.options import GLOBAL, Options, with_options
from mistralrs.cli.unbuilt import refuse_unbuilt_command


@with_options(GLOBAL)
def doctor(
    json: Annotated[bool, typer.Option("--json", help="Output JSON instead of human-readable text.")] = False,
    *,
    opts: Options,
) -> None:
    """Run system diagnostics and environment checks."""
    refuse_unbuilt_command("doctor")
