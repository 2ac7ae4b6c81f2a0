"""`mistralrs tune`: which quantization of a model fits this machine, and how much context is left.

Reads the model's config.json and safetensors headers only (see mistralrs.tune), never its weights.
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated, Literal

import typer

from mistralrs.cli.options import (
    BACKEND,
    GLOBAL,
    MODEL_SOURCE,
    ModelType,
    ModelTypeArgument,
    OptionGroup,
    Options,
    with_options,
)
from mistralrs.cli.token_source import DEFAULT_TOKEN_SOURCE
from mistralrs.errors import UserError

PANEL = "Tuning"
# Only --backend of the backend group: it decides which quantizations are offered; --threads would change nothing.
BACKEND_CHOICE = OptionGroup(BACKEND.panel, tuple(o for o in BACKEND.options if o.name == "backend"))


@with_options(MODEL_SOURCE, BACKEND_CHOICE, GLOBAL)
def tune(
    model_type: ModelTypeArgument = ModelType.auto,
    profile: Annotated[Literal["quality", "balanced", "fast"], typer.Option(
        "--profile", rich_help_panel=PANEL, help="Tuning profile.")] = "balanced",
    json: Annotated[bool, typer.Option(
        "--json", rich_help_panel=PANEL, help="Output JSON instead of human-readable text.")] = False,
    emit_config: Annotated[Path | None, typer.Option(
        "--emit-config", metavar="PATH", rich_help_panel=PANEL,
        help="Emit a TOML config file with the recommended settings (for `mistralrs from-config`).")] = None,
    *,
    opts: Options,
) -> None:
    """Recommend quantization and device mapping for a model on this machine."""
    from mistralrs.backends import resolve_backend_name
    from mistralrs.cli.tune_output import analysis_json, print_analysis
    from mistralrs.cli.unbuilt import refuse_unbuilt_model_type
    from mistralrs.tune import machine
    from mistralrs.tune.metadata import read_metadata
    from mistralrs.tune.recommend import analyse

    refuse_unbuilt_model_type(model_type.value)
    backend = resolve_backend_name(opts.backend)
    token = (opts.get("token_source") or DEFAULT_TOKEN_SOURCE).resolve()
    meta = read_metadata(opts.model_id, token=token)
    analysis = analyse(meta, machine.detect_machine(backend), backend=backend, profile=profile, dtype=opts.dtype)
    backend_given = opts.given("backend")
    if emit_config is not None:
        _write_config(emit_config, analysis, backend_given)
    if json:
        typer.echo(jsonlib.dumps(analysis_json(analysis, backend_given=backend_given), indent=2))
    else:
        print_analysis(analysis, backend_given=backend_given)
    if emit_config is not None:
        typer.echo(f"Wrote {emit_config}; run it with `mistralrs from-config --file {emit_config}`.", err=True)


def _write_config(path: Path, analysis, backend_given: bool) -> None:
    from mistralrs.tune.emit_config import config_toml

    if analysis.recommended is None:
        raise UserError(f"No quantization of {analysis.meta.model_id} fits this machine, so there is no "
                        f"configuration to write to {path}.")
    try:
        path.write_text(config_toml(analysis, backend_given=backend_given), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"Cannot write --emit-config {path}: {exc.strerror or exc}.", param="emit_config") from None
