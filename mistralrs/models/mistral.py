"""Mistral (`MistralForCausalLM`): Llama with sliding-window attention on every layer."""

from mistralrs.models.config import llama_family_spec, uniform_window
from mistralrs.models.decoder import CausalLM


def build(config: dict, ops) -> CausalLM:
    return CausalLM(ops, llama_family_spec(config, windows=uniform_window(config)))
