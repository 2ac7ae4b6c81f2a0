"""How `mistralrs tune` shows its analysis: a rich table for people, a versioned JSON for programs.

JSON schema (version 1; fields are only ever added):

    {"version": 1,
     "model": {"id", "parameters", "dtype", "context_length", "kv_bytes_per_token"},
     "machine": {"kind": "cuda"|"metal"|"cpu", "name", "memory_bytes", "budget_bytes", "offload_bytes"},
     "backend": "torch"|"mlx", "profile": "quality"|"balanced"|"fast",
     "options": [{"quant": "q8_0"|"afq4"|... or null when unquantized, "dtype": "bf16"|"f16"|"f32" or null,
                  "label", "size_bytes", "memory_fraction", "context_tokens", "context_is_max",
                  "quality", "status": "fits"|"hybrid"|"too_large", "recommended": bool}],
     "recommended": {"quant", "dtype", "command"} or null,
     "paged_attention": {"available": bool, "mode": "auto"|"off"},
     "compiled_layers": bool}   (sizes include what compiling the decoder layers keeps resident)
"""

from __future__ import annotations

from mistralrs.engine.compiling import COMPILED_LAYERS_BYTES
from mistralrs.tune.recommend import FITS, HYBRID, Analysis, Option, load_dtype, recommended_command

SCHEMA_VERSION = 1
STATUS_TEXT = {FITS: "✅ Fits", HYBRID: "⚠️ Hybrid", "too_large": "❌ Too Large"}


def paged_attention(analysis: Analysis) -> dict:
    from mistralrs.cli.unbuilt import UNBUILT_OPTIONS

    available = "paged_attn" not in UNBUILT_OPTIONS
    # mistral.rs's `auto` turns it on for CUDA only.
    return {"available": available, "mode": "auto" if available and analysis.machine.kind == "cuda" else "off"}


def analysis_json(analysis: Analysis, *, backend_given: bool) -> dict:
    pick = analysis.recommended
    machine = analysis.machine
    return {
        "version": SCHEMA_VERSION,
        "model": {"id": analysis.meta.model_id, "parameters": analysis.parameters, "dtype": analysis.compute_dtype,
                  "context_length": analysis.max_context, "kv_bytes_per_token": analysis.kv_bytes_per_token},
        "machine": {"kind": machine.kind, "name": machine.name, "memory_bytes": machine.memory_bytes,
                    "budget_bytes": machine.budget_bytes, "offload_bytes": machine.offload_bytes},
        "backend": analysis.backend,
        "profile": analysis.profile,
        "options": [_option_json(o, analysis) for o in analysis.options],
        "recommended": None if pick is None else {
            "quant": pick.quant.name if pick.quant.quantized else None,
            "dtype": load_dtype(analysis),
            "command": recommended_command(analysis, backend_given=backend_given)},
        "paged_attention": paged_attention(analysis),
        "compiled_layers": analysis.compiled_layers,
    }


def _option_json(option: Option, analysis: Analysis) -> dict:
    quantized = option.quant.quantized
    return {"quant": option.quant.name if quantized else None, "dtype": None if quantized else option.quant.name,
            "label": option.quant.label, "size_bytes": option.size_bytes,
            "memory_fraction": round(option.size_bytes / analysis.machine.memory_bytes, 4),
            "context_tokens": option.context_tokens,
            "context_is_max": option.status == FITS and option.context_tokens == analysis.max_context,
            "quality": option.quant.quality, "status": option.status, "recommended": option.recommended}


def print_analysis(analysis: Analysis, *, backend_given: bool) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    machine = analysis.machine
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)  # piped into a file or a pager: never wrap the table
    out = lambda text="": console.print(text, markup=False, soft_wrap=True)  # noqa: E731 - ids may hold [brackets]
    out("Tuning Analysis\n===============\n")
    out(f"Model: {analysis.meta.model_id} ({analysis.parameters / 1e6:,.1f}M parameters, {analysis.compute_dtype})")
    out(f"Profile: {analysis.profile.capitalize()}")
    out(f"Backend: {analysis.backend} on {machine.kind} ({machine.name})")
    out(f"Total {machine.memory_name}: {_bytes(machine.memory_bytes)} (a model may use {_bytes(machine.budget_bytes)})")
    out(f"KV cache: {_bytes(analysis.kv_bytes_per_token * 1024)} per 1k tokens, "
        f"context up to {analysis.max_context:,} tokens\n")
    out("Quantization Options\n--------------------")
    table = Table(box=box.SQUARE)
    memory_header = "VRAM %" if machine.kind == "cuda" else "Mem %"
    for header in ("Quant", "Est. Size", memory_header, "Context Room", "Quality", "Status"):
        table.add_column(header, no_wrap=True)
    for option in analysis.options:
        table.add_row(option.quant.label, _bytes(option.size_bytes), _percent(option.size_bytes, machine.memory_bytes),
                      _context(option, analysis.max_context), option.quant.quality,
                      "🚀 Recommended" if option.recommended else STATUS_TEXT[option.status])
    console.print(table)
    out("\nRecommended Command\n-------------------")
    command = recommended_command(analysis, backend_given=backend_given)
    out(f"  {command}" if command else f"  None: no option fits in this machine's {machine.memory_name}.")
    if analysis.compiled_layers:
        out(f"\n[INFO] Sizes include ~{_bytes(COMPILED_LAYERS_BYTES)} for compiled decoder layers (the torch "
            "compiler stays loaded); MISTRALRS_COMPILE=0 loads without it, with slower decode.")
    paged = paged_attention(analysis)
    if paged["available"]:
        out(f"\n[INFO] PagedAttention is available (mode: {paged['mode']})")
    else:
        out("\n[INFO] PagedAttention is not built yet (mode: off): the KV cache grows with each sequence.")


def _bytes(count: int) -> str:
    if count >= 2**30:
        return f"{count / 2**30:.2f} GB"
    return f"{count / 2**20:.0f} MB"


def _percent(part: int, whole: int) -> str:
    share = part / whole * 100 if whole else 0
    return "<1%" if 0 < share < 1 else f"{share:.0f}%"


def _context(option: Option, max_context: int) -> str:
    if option.status != FITS:
        return "-"
    tokens = option.context_tokens
    text = f"{tokens // 1024}k" if tokens >= 1024 else str(tokens)
    return f"{text} (max)" if tokens == max_context else text
