"""Gemma 3 text (`Gemma3ForCausalLM`).

What differs from the Llama family:
- embeddings are multiplied by sqrt(hidden_size) (rounded to the weight dtype);
- RMSNorm weights are stored as w - 1 (we fold the +1 in at load time), and each
  layer has four norms: around attention and around the MLP ("sandwich" norms);
- per-head q/k RMSNorm, attention scale query_pre_attn_scalar ** -0.5;
- local (sliding-window) and global layers with two RoPE bases;
- GeGLU MLP (gelu with the tanh approximation); optional final logit soft-capping.
"""

from __future__ import annotations

import math

from mistralrs.backends.ops import Ops, Tensor
from mistralrs.errors import ModelLoadError
from mistralrs.models.base import RMSNorm
from mistralrs.models.cache import KVCache
from mistralrs.models.config import ConfigReader
from mistralrs.models.decoder import CausalLM, DecoderBody, DecoderLayer, DecoderSpec
from mistralrs.models.layers import AttentionSpec
from mistralrs.models.rope import build_rope

DEFAULT_THETA = {"full_attention": 1_000_000.0, "sliding_attention": 10_000.0}


class Gemma3Layer(DecoderLayer):
    def __init__(self, ops: Ops, spec: DecoderSpec, attention: AttentionSpec):
        super().__init__(ops, spec, attention)
        h, eps = spec.hidden_size, spec.rms_norm_eps
        self.pre_feedforward_layernorm = RMSNorm(ops, h, eps, offset=1.0)
        self.post_feedforward_layernorm = RMSNorm(ops, h, eps, offset=1.0)

    def __call__(self, x: Tensor, cache: KVCache) -> Tensor:
        h = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cache))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class Gemma3Body(DecoderBody):
    layer_class = Gemma3Layer

    def finalize(self) -> None:
        super().finalize()
        # HF multiplies by sqrt(hidden) cast to the weight dtype; keep the same rounding.
        dtype = self.ops.compute_dtype  # the table may be quantized; its lookups come out in this dtype
        scale = self.ops.asarray([math.sqrt(self.embed_tokens.dim)], "float32")
        self.embed_scale = self.ops.astype(scale, dtype)

    def embed(self, ids: Tensor) -> Tensor:
        return self.embed_tokens(ids) * self.embed_scale


class Gemma3ForCausalLM(CausalLM):
    body_class = Gemma3Body

    def __init__(self, ops: Ops, spec: DecoderSpec):
        super().__init__(ops, spec)
        self.final_softcap = spec.extra.get("final_logit_softcapping")

    def head(self, hidden: Tensor) -> Tensor:
        logits = self.lm_head(hidden)
        if self.final_softcap:
            logits = self.ops.tanh(logits / self.final_softcap) * self.final_softcap
        return logits


def _layer_types(config: dict, layers: int) -> list[str]:
    types = config.get("layer_types")
    if types:
        if len(types) != layers:
            raise ModelLoadError(
                f"config.json lists {len(types)} layer_types for {layers} layers; they must match."
            )
        return list(types)
    pattern = int(config.get("sliding_window_pattern", 6))
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]


def _rope_config(config: dict, kind: str) -> dict:
    """Gemma 3's per-kind rope settings, from the transformers-5 or the older layout."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and kind in params:
        section = dict(params[kind])
        section.setdefault("rope_theta", DEFAULT_THETA[kind])
        return {"rope_parameters": section, "max_position_embeddings": config.get("max_position_embeddings")}
    if kind == "sliding_attention":
        theta = config.get("rope_local_base_freq", DEFAULT_THETA[kind])
        return {"rope_theta": theta}
    return {
        "rope_theta": config.get("rope_theta", DEFAULT_THETA[kind]),
        "rope_scaling": config.get("rope_scaling"),
        "max_position_embeddings": config.get("max_position_embeddings"),
    }


def build(config: dict, ops: Ops) -> Gemma3ForCausalLM:
    c = ConfigReader(config)
    if c.get("attn_logit_softcapping") is not None:
        raise ModelLoadError(
            "config.json sets attn_logit_softcapping, which Gemma 3 checkpoints do not use and "
            "mistralrs does not implement; remove it or use a Gemma 3 config."
        )
    if c.get("use_bidirectional_attention"):
        raise ModelLoadError("config.json sets use_bidirectional_attention (an embedding variant); "
                             "load it as an embedding model, not a causal LM.")
    hidden = c.require("hidden_size")
    heads = c.require("num_attention_heads")
    kv_heads = c.get("num_key_value_heads", heads, int)
    head_dim = c.get("head_dim", None, int) or hidden // heads
    layers = c.require("num_hidden_layers")
    eps = c.get("rms_norm_eps", 1e-6, float)
    window = c.get("sliding_window", None, int)
    scale = c.get("query_pre_attn_scalar", head_dim, float) ** -0.5
    ropes = {kind: build_rope(_rope_config(config, kind), head_dim) for kind in DEFAULT_THETA}
    attention = []
    for kind in _layer_types(config, layers):
        attention.append(
            AttentionSpec(
                hidden_size=hidden,
                num_heads=heads,
                num_kv_heads=kv_heads,
                head_dim=head_dim,
                rope=ropes[kind],
                scale=scale,
                qkv_bias=bool(c.get("attention_bias", False)),
                o_bias=bool(c.get("attention_bias", False)),
                qk_norm_eps=eps,
                norm_offset=1.0,
                window=window if kind == "sliding_attention" else None,
            )
        )
    spec = DecoderSpec(
        vocab_size=c.require("vocab_size"),
        hidden_size=hidden,
        intermediate_size=c.require("intermediate_size"),
        num_layers=layers,
        rms_norm_eps=eps,
        activation=c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh",
        attention=attention,
        tie_word_embeddings=bool(c.get("tie_word_embeddings", True)),
        norm_offset=1.0,
        extra={"final_logit_softcapping": c.get("final_logit_softcapping", None, float)},
    )
    return Gemma3ForCausalLM(ops, spec)
