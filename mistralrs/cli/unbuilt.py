"""The one table of what the CLI accepts but the engine cannot do yet.

Asking for an unbuilt feature exits with code 2 and names it; it is never
silently ignored. Defaults (e.g. `--paged-attn auto`) ask for nothing. When a
feature lands, delete its row here and wire the option through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mistralrs.errors import UserError


@dataclass(frozen=True)
class UnbuiltOption:
    flag: str
    feature: str
    harmless: tuple = (None, False)  # values that ask for nothing unbuilt: the default, "off", ...


UNBUILT_OPTIONS: dict[str, UnbuiltOption] = {
    # runtime
    "no_kv_cache": UnbuiltOption("--no-kv-cache", "running without a KV cache"),
    "prefix_cache_n": UnbuiltOption("--prefix-cache-n", "prefix caching", (16, 0)),
    "enable_search": UnbuiltOption("--enable-search", "web search"),
    "search_embedding_model": UnbuiltOption("--search-embedding-model", "web search"),
    # paged attention
    "paged_attn": UnbuiltOption("--paged-attn", "PagedAttention", ("auto", "off")),
    "pa_context_len": UnbuiltOption("--pa-context-len", "PagedAttention"),
    "pa_memory_mb": UnbuiltOption("--pa-memory-mb", "PagedAttention"),
    "pa_memory_fraction": UnbuiltOption("--pa-memory-fraction", "PagedAttention"),
    "pa_block_size": UnbuiltOption("--pa-block-size", "PagedAttention"),
    "pa_cache_type": UnbuiltOption("--pa-cache-type", "PagedAttention KV cache quantization", (None, "auto")),
    # device mapping
    "device_layers": UnbuiltOption("--device-layers", "device mapping"),
    "topology": UnbuiltOption("--topology", "device mapping"),
    "max_batch_size": UnbuiltOption("--max-batch-size", "device mapping", (1,)),
    # adapters
    "lora": UnbuiltOption("--lora", "LoRA adapters"),
    "xlora": UnbuiltOption("--xlora", "X-LoRA adapters"),
    "xlora_order": UnbuiltOption("--xlora-order", "X-LoRA adapters"),
    "tgt_non_granular_index": UnbuiltOption("--tgt-non-granular-index", "X-LoRA adapters"),
    # vision
    "max_edge": UnbuiltOption("--max-edge", "vision models"),
    "max_num_images": UnbuiltOption("--max-num-images", "vision models"),
    "max_image_length": UnbuiltOption("--max-image-length", "vision models"),
    # server
    "ui": UnbuiltOption("--ui", "the web UI"),
    "mcp_port": UnbuiltOption("--mcp-port", "the MCP server"),
    "mcp_config": UnbuiltOption("--mcp-config", "MCP tool servers"),
}

UNBUILT_COMMANDS: dict[str, str] = {}

UNBUILT_MODEL_TYPES: dict[str, str] = {
    "vision": "vision models",
    "diffusion": "diffusion (image generation) models",
    "speech": "speech models",
    "embedding": "embedding models",
}


class NotBuiltError(UserError):
    """A feature the CLI knows about but the engine does not have yet."""


def _not_built(what: str, feature: str) -> NotBuiltError:
    return NotBuiltError(f"{what} is not implemented yet ({feature}).")


def refuse_unbuilt_command(command: str) -> None:
    if command in UNBUILT_COMMANDS:
        raise _not_built(f"`mistralrs {command}`", UNBUILT_COMMANDS[command])


def refuse_unbuilt_model_type(model_type: str) -> None:
    if model_type in UNBUILT_MODEL_TYPES:
        raise _not_built(f"Model type `{model_type}`", UNBUILT_MODEL_TYPES[model_type])


def refuse_unbuilt_options(values: dict[str, Any]) -> None:
    """Raise for the first option in `values` that asks for an unbuilt feature."""
    for name, row in UNBUILT_OPTIONS.items():
        value = values.get(name)
        if name in values and not _is_harmless(value, row.harmless):
            shown = row.flag if value is True else f"{row.flag} {value}"
            raise _not_built(shown, row.feature)


def _is_harmless(value: Any, harmless: tuple) -> bool:
    # Compare types too: 0 == False in Python, but `--tgt-non-granular-index 0` asks for X-LoRA.
    return any(value is h or (type(value) is type(h) and value == h) for h in harmless)
