"""`mistralrs from-config`: run `serve` (one model or several) or `run` as a TOML file describes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mistralrs.cli.options import GLOBAL, Options, with_options


@with_options(GLOBAL)
def from_config(
    file: Annotated[Path, typer.Option("-f", "--file", metavar="PATH", help="TOML configuration file.")],
    *,
    opts: Options,
) -> None:
    """Run the CLI from a TOML configuration file (several models at once, too)."""
    from mistralrs.cli.config_file import read_config_file
    from mistralrs.cli.loading import check_loading_options

    # Global flags typed on the command line (`--seed 1 from-config ...`) win over the file's [global].
    overrides = {name: value for name, value in opts.items() if opts.given(name)}
    config = read_config_file(file, overrides)
    for model in config.models:  # every refusal before the first model loads
        check_loading_options(model.opts, model.kind)
    if config.command == "run":
        from mistralrs.cli.run import chat

        chat(config.models[0].opts, enable_thinking=config.enable_thinking)
    else:
        from mistralrs.cli.serve import serve_models

        serve_models([m.opts for m in config.models], config.server, config.default_model_id)
