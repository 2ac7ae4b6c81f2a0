"""Llama 1/2/3.x (`LlamaForCausalLM`): the plain pre-norm decoder; Llama 3.x rope scaling lives in rope.py."""

from mistralrs.models.config import llama_family_spec
from mistralrs.models.decoder import CausalLM


def build(config: dict, ops) -> CausalLM:
    bias = bool(config.get("attention_bias", False))
    return CausalLM(ops, llama_family_spec(config, qkv_bias=bias, o_bias=bias))
