"""Phi-3 / Phi-3.5 (`Phi3ForCausalLM`).

The checkpoint stores q/k/v as one `qkv_proj` and gate/up as one `gate_up_proj`
(which is also what we fuse to for the other architectures); long contexts use
`longrope` (rope.py), which switches frequencies past the original context.
"""

from mistralrs.models.config import llama_family_spec, uniform_window
from mistralrs.models.decoder import CausalLM


def build(config: dict, ops) -> CausalLM:
    return CausalLM(
        ops,
        llama_family_spec(config, windows=uniform_window(config), fused_checkpoint=True),
    )
