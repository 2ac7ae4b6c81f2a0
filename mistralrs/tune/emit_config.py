"""The TOML file `tune --emit-config` writes: a `from-config` file serving the recommendation."""

from __future__ import annotations

import json

from mistralrs.tune.recommend import Analysis, load_dtype


def config_toml(analysis: Analysis, *, backend_given: bool) -> str:
    option = analysis.recommended
    lines = [
        f"# Written by `mistralrs tune` (profile: {analysis.profile}) for {analysis.machine.name}.",
        "# Run it with: mistralrs from-config --file <this file>",
        'command = "serve"',
        "",
        "[server]",
        "port = 1234",
        "",
        "[[models]]",
        'kind = "auto"',
        f"model_id = {_string(analysis.meta.model_id)}",
        f"dtype = {_string(load_dtype(analysis))}",
    ]
    if backend_given:
        lines.append(f"backend = {_string(analysis.backend)}")
    if option is not None and option.quant.quantized:
        lines += ["", "[models.quantization]", f"in_situ_quant = {_string(option.quant.name)}"]
    return "\n".join(lines) + "\n"


def _string(text: str) -> str:
    # A JSON string is a valid TOML basic string (same quotes and escapes).
    return json.dumps(text, ensure_ascii=False)
