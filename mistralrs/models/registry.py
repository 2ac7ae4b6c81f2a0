"""From the Hugging Face `architectures` field to the module that builds the model.

Modules are imported lazily, so loading one architecture never imports the others.
Each module exposes `build(config: dict, ops) -> CausalLM`.
"""

from __future__ import annotations

import importlib

from mistralrs.errors import ModelLoadError

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3",
    "Phi3ForCausalLM": "phi3",
}

# `-a/--arch` names as the original CLI spells them, plus config.json `model_type` values.
ALIASES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}


def supported() -> str:
    return ", ".join(f"{name} ({alias})" for alias, name in ALIASES.items() if alias != "gemma3_text")


def resolve_architecture(config: dict, arch_override: str | None = None) -> str:
    """The registry key for a config, honouring `-a/--arch`."""
    if arch_override:
        key = ALIASES.get(arch_override.lower(), arch_override)
        if key not in ARCHITECTURES:
            raise ModelLoadError(
                f"Unknown architecture `{arch_override}` given with -a/--arch. Supported: {supported()}."
            )
        return key
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return name
    model_type = config.get("model_type")
    if not names and model_type in ALIASES:
        return ALIASES[model_type]
    found = ", ".join(names) or f"model_type {model_type!r}"
    raise ModelLoadError(
        f"config.json describes {found}, which mistralrs cannot run yet. Supported: {supported()}. "
        "If the model is one of these under another name, pass -a/--arch."
    )


def build_model(config: dict, ops, arch: str):
    module = importlib.import_module(f"mistralrs.models.{ARCHITECTURES[arch]}")
    return module.build(config, ops)
