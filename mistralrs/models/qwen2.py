"""Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): Llama with biases on q, k and v (not o)."""

from mistralrs.models.config import llama_family_spec, qwen_windows
from mistralrs.models.decoder import CausalLM


def build(config: dict, ops) -> CausalLM:
    return CausalLM(ops, llama_family_spec(config, qkv_bias=True, windows=qwen_windows(config)))
