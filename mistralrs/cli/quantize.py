"""`mistralrs quantize`: write UQFF files (not built yet: exits 2 naming it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from mistralrs.cli.options import GLOBAL, MODEL_SOURCE, ModelType, ModelTypeArgument, Options, with_options
from mistralrs.cli.unbuilt import refuse_unbuilt_command

PANEL = "Quantization"


def split_levels(levels: list[str]) -> list[str]:
    """--isq q4k,q8_0 and --isq q4k --isq q8_0 mean the same."""
    return [level.strip() for value in levels for level in value.split(",") if level.strip()]


@with_options(MODEL_SOURCE, GLOBAL)
def quantize(
    isq: Annotated[list[str], typer.Option(
        "--isq", metavar="LEVEL", rich_help_panel=PANEL,
        help="Quantization level(s), comma-separated or repeated (4, 8, q4_0, q4k, q8_0, ...).")],
    output: Annotated[Path, typer.Option(
        "-o", "--output", metavar="PATH", rich_help_panel=PANEL,
        help="Output: a .uqff file (one ISQ level) or a directory (auto-named per level).")],
    model_type: ModelTypeArgument = ModelType.auto,
    isq_organization: Annotated[Literal["default", "moqe"] | None, typer.Option(
        "--isq-organization", rich_help_panel=PANEL, help="ISQ organization strategy.")] = None,
    imatrix: Annotated[Path | None, typer.Option(
        "--imatrix", metavar="PATH", rich_help_panel=PANEL, help="imatrix file for enhanced quantization.")] = None,
    calibration_file: Annotated[Path | None, typer.Option(
        "--calibration-file", metavar="PATH", rich_help_panel=PANEL,
        help="Calibration file for imatrix generation.")] = None,
    no_readme: Annotated[bool, typer.Option(
        "--no-readme", rich_help_panel=PANEL, help="Skip automatic README.md model card generation.")] = False,
    *,
    opts: Options,
) -> None:
    """Generate UQFF quantized model file(s)."""
    refuse_unbuilt_command("quantize")
