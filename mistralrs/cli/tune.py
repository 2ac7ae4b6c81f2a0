"""`mistralrs tune`: quantization and device-mapping recommendations (not built yet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from mistralrs.cli.options import GLOBAL, MODEL_SOURCE, ModelType, ModelTypeArgument, Options, with_options
from mistralrs.cli.unbuilt import refuse_unbuilt_command

PANEL = "Tuning"


@with_options(MODEL_SOURCE, GLOBAL)
def tune(
    model_type: ModelTypeArgument = ModelType.auto,
    profile: Annotated[Literal["quality", "balanced", "fast"], typer.Option(
        "--profile", rich_help_panel=PANEL, help="Tuning profile.")] = "balanced",
    json: Annotated[bool, typer.Option(
        "--json", rich_help_panel=PANEL, help="Output JSON instead of human-readable text.")] = False,
    emit_config: Annotated[Path | None, typer.Option(
        "--emit-config", metavar="PATH", rich_help_panel=PANEL,
        help="Emit a TOML config file with the recommended settings.")] = None,
    *,
    opts: Options,
) -> None:
    """Recommend quantization and device mapping for a model on this machine."""
    refuse_unbuilt_command("tune")
