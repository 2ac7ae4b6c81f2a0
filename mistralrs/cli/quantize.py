"""`mistralrs quantize`: write UQFF files, one shard set per quantization type."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from mistralrs.cli.options import GLOBAL, MODEL_SOURCE, ModelType, ModelTypeArgument, Options, with_options
from mistralrs.cli.token_source import DEFAULT_TOKEN_SOURCE

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
    from mistralrs.engine.uqff_export import export_uqff

    live = sys.stderr.isatty()

    def report(message: str) -> None:
        if live:
            typer.echo("\r\033[2K" + message, nl=False, err=True)

    token_source = opts.get("token_source") or DEFAULT_TOKEN_SOURCE
    hf_cache = opts.get("hf_cache")
    result = export_uqff(
        opts.model_id, split_levels(isq), output, backend=opts.get("backend") or "auto", arch=opts.get("arch"),
        hf_cache=str(hf_cache) if hf_cache else None, token=token_source.resolve(),
        isq_organization=isq_organization or "default", readme=not no_readme, report=report,
        imatrix=str(imatrix) if imatrix else None, calibration_file=str(calibration_file) if calibration_file else None,
    )
    if live:
        typer.echo("\r\033[2K", nl=False, err=True)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    for quant, shards in result.sets.items():
        typer.echo(f"{quant}: {', '.join(str(p) for p in shards)}")
    if result.readme is not None:
        typer.echo(f"Model card: {result.readme}")
        typer.echo("Upload with:\n  huggingface-cli upload <your-username>/"
                   f"{result.folder.name} {result.folder} --repo-type model")
