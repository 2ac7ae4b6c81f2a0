"""From the model-loading options to a loaded LLM (shared by run and bench).

`check_loading_options` runs first and is cheap: every refusal (unbuilt feature,
conflicting options) comes before the seconds it takes to import a backend and
read weights.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from mistralrs.cli.options import ModelType, Options
from mistralrs.cli.token_source import DEFAULT_TOKEN_SOURCE
from mistralrs.cli.unbuilt import refuse_unbuilt_model_type, refuse_unbuilt_options
from mistralrs.errors import UserError

if TYPE_CHECKING:
    from mistralrs.engine.api import LLM

PA_BUDGETS = ("pa_context_len", "pa_memory_mb", "pa_memory_fraction")


def check_loading_options(opts: Options, model_type: ModelType) -> None:
    budgets = [name for name in PA_BUDGETS if opts.get(name) is not None]
    if len(budgets) > 1:
        flags = " and ".join("--" + name.replace("_", "-") for name in budgets)
        raise UserError(f"{flags} are mutually exclusive: give at most one PagedAttention memory budget.")
    refuse_unbuilt_model_type(model_type.value)
    refuse_unbuilt_options(dict(opts.items()))
    if opts.get("isq") is not None:
        from mistralrs.backends import resolve_backend_name
        from mistralrs.quant.isq import parse_isq

        parse_isq(opts.get("isq"), resolve_backend_name(opts.backend))
    if model_type is ModelType.auto:
        refuse_unbuilt_model_type(detect_model_type(opts.model_id))


def detect_model_type(model_id: str) -> str:
    """The model type of a local folder from its files; hub ids and GGUF files count as text.

    For those the engine itself names an architecture it cannot run, which is as clear.
    """
    folder = os.path.expanduser(model_id)
    if not os.path.isdir(folder):
        return "text"
    if os.path.exists(os.path.join(folder, "model_index.json")):
        return "diffusion"  # diffusers pipelines
    if os.path.exists(os.path.join(folder, "modules.json")):
        return "embedding"  # sentence-transformers
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return "text"  # the engine explains what is wrong with the folder
    if isinstance(config, dict) and ("vision_config" in config or "audio_config" in config):
        return "vision"
    return "text"


def load_model(opts: Options) -> LLM:
    from mistralrs.engine.api import load

    token_source = opts.get("token_source") or DEFAULT_TOKEN_SOURCE
    hf_cache = opts.get("hf_cache")
    return load(
        opts.model_id,
        backend=opts.backend,
        cpu=opts.cpu,
        dtype=opts.dtype,
        tokenizer=opts.get("tokenizer"),
        arch=opts.get("arch"),
        hf_cache=str(hf_cache) if hf_cache else None,
        token=token_source.resolve(),
        chat_template=opts.get("chat_template"),
        jinja_explicit=opts.get("jinja_explicit"),
        quantized_file=opts.get("quantized_file"),
        format=opts.get("format") or "auto",
        tok_model_id=opts.get("tok_model_id"),
        gqa=opts.get("gqa") or 1,
        threads=opts.get("threads"),
        isq=opts.get("isq"),
        isq_organization=opts.get("isq_organization") or "default",
        from_uqff=opts.get("from_uqff"),
        imatrix=str(opts.get("imatrix")) if opts.get("imatrix") else None,
        calibration_file=str(opts.get("calibration_file")) if opts.get("calibration_file") else None,
        # The default 4096 sizes device mapping; only a typed --max-seq-len overrides the model's context.
        max_seq_len=opts.max_seq_len if opts.given("max_seq_len") else None,
        progress=True,
    )
