"""Qwen3 (`Qwen3ForCausalLM`): Llama with per-head RMSNorm on queries and keys, no qkv bias."""

from mistralrs.models.config import llama_family_spec, qwen_windows
from mistralrs.models.decoder import CausalLM


def build(config: dict, ops) -> CausalLM:
    bias = bool(config.get("attention_bias", False))
    return CausalLM(
        ops, llama_family_spec(config, qkv_bias=bias, o_bias=bias, qk_norm=True, windows=qwen_windows(config))
    )
