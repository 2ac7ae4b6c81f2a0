"""The pre-norm decoder shared by the Llama family (Llama, Mistral, Qwen2, Qwen3, Phi-3).

    h = x + attn(input_layernorm(x));  out = h + mlp(post_attention_layernorm(h))

Gemma 3 adds two norms and scaled embeddings; it subclasses the layer and body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mistralrs.backends.ops import Ops, Tensor
from mistralrs.models.base import QUANTIZED, Embedding, Linear, Missing, Module, RMSNorm
from mistralrs.models.cache import KVCache
from mistralrs.models.layers import Attention, AttentionSpec, GatedMLP


@dataclass
class DecoderSpec:
    """Everything a decoder needs besides per-layer attention specs."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    rms_norm_eps: float
    activation: str
    attention: list[AttentionSpec]  # one per layer (windows and rope can differ by layer)
    tie_word_embeddings: bool
    fused_mlp_checkpoint: bool = False
    mlp_bias: bool = False
    norm_offset: float = 0.0
    extra: dict = field(default_factory=dict)


class DecoderLayer(Module):
    def __init__(self, ops: Ops, spec: DecoderSpec, attention: AttentionSpec):
        super().__init__(ops)
        h = spec.hidden_size
        self.input_layernorm = RMSNorm(ops, h, spec.rms_norm_eps, spec.norm_offset)
        self.self_attn = Attention(ops, attention)
        self.post_attention_layernorm = RMSNorm(ops, h, spec.rms_norm_eps, spec.norm_offset)
        self.mlp = GatedMLP(
            ops, h, spec.intermediate_size, spec.activation, spec.fused_mlp_checkpoint, spec.mlp_bias
        )

    def __call__(self, x: Tensor, cache: KVCache) -> Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cache)
        return h + self.mlp(self.post_attention_layernorm(h))


# Decode steps call the compiled layers in groups of this many. Each compiled call costs ~60 us
# of Python around its work (checking its inputs' shapes, torch's wrappers): a tenth of a
# step's time on the 30-layer h512 benchmark model in q8_0 (2-core Xeon VM: 10.0 -> 8.6 ms per
# step with all 30 layers in one call). Tracing cost grows with the group (0.12 s per layer at
# each load, even with inductor's cache warm), but groups of the same layer kinds share one trace:
# 6 layers per call ran about as fast as 30 and cost 1.4 s of loading where 30 cost 5.4. Six is
# also Gemma 3's period of five local layers and one global one.
LAYERS_PER_DECODE_CALL = 6


class DecoderBody(Module):
    layer_class = DecoderLayer

    def __init__(self, ops: Ops, spec: DecoderSpec):
        super().__init__(ops)
        self.embed_tokens = Embedding(ops, spec.vocab_size, spec.hidden_size)
        self.layers = [self.layer_class(ops, spec, spec.attention[i]) for i in range(spec.num_layers)]
        self.norm = RMSNorm(ops, spec.hidden_size, spec.rms_norm_eps, spec.norm_offset)
        self._compiled_prompt_layers = None
        self._compiled_decode_layers = None

    def finalize(self) -> None:
        super().finalize()
        # One compiled forward serves every group of layers: they differ only in their weights.
        # Decode steps repeat their shapes, which lets a backend skip per-call checks
        # (Ops.compile), and run several layers per compiled call (LAYERS_PER_DECODE_CALL);
        # prompt chunks repeat them except for their row count, and run one layer per call.
        self._compiled_prompt_layers = self.ops.compile(run_layers, varying_rows=True)
        self._compiled_decode_layers = self.ops.compile(run_layers, fixed_shapes=True)
        n = LAYERS_PER_DECODE_CALL
        self._decode_groups = [self.layers[i : i + n] for i in range(0, len(self.layers), n)]
        # A prompt chunk's work dwarfs the cost of a call, and a trace of one layer loads faster
        # and keeps less resident than one of six (115.6 M benchmark model at q8_0, warm cache:
        # 12.6-15.3 s and +220-225 MB after loading, against 22-26 s and +248-252 MB).
        self._prompt_groups = [[layer] for layer in self.layers]

    def embed(self, ids: Tensor) -> Tensor:
        return self.embed_tokens(ids)

    def __call__(self, ids: Tensor, caches: list[KVCache]) -> Tensor:
        x = self.embed(ids)
        # Compiled layers run single sequences (a batch's per-step bookkeeping is Python
        # state that would retrace every step) and not while a calibration hook observes.
        if self._compiled_decode_layers is not None and isinstance(caches[0], KVCache) and Linear.observer is None:
            for cache in caches:
                # Grow outside the compiled code, so it never traces an allocation.
                cache.reserve(x.shape[1])
            decode = x.shape[1] == 1
            step = self._compiled_decode_layers if decode else self._compiled_prompt_layers
            start = 0
            for group in self._decode_groups if decode else self._prompt_groups:
                x = step(group, x, caches[start : start + len(group)])
                start += len(group)
            return self.norm(x)
        for layer, cache in zip(self.layers, caches, strict=True):
            x = layer(x, cache)
        return self.norm(x)


def run_layers(layers: list, x: Tensor, caches: list[KVCache]) -> Tensor:
    """Consecutive decoder layers, each with its cache: what one compiled decode call runs."""
    for layer, cache in zip(layers, caches, strict=True):
        x = layer(x, cache)
    return x


class CausalLM(Module):
    """Body plus output head. `model(ids, caches)` returns logits (B, L or 1, vocab)."""

    body_class = DecoderBody

    def __init__(self, ops: Ops, spec: DecoderSpec):
        super().__init__(ops)
        self.spec = spec
        self._compiled_head = None
        self.model = self.body_class(ops, spec)
        self.lm_head = Linear(ops, spec.hidden_size, spec.vocab_size)
        if spec.tie_word_embeddings:
            # Tied checkpoints usually omit lm_head.weight; some include a copy anyway.
            self.lm_head.weight = Missing((spec.vocab_size, spec.hidden_size), optional=True)

    def sanitize(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        """Drop checkpoint entries that are not weights of this model (rotary caches)."""
        return {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}

    def finalize(self) -> None:
        table = self.model.embed_tokens.weight
        if isinstance(self.lm_head.weight, Missing) and isinstance(table, QUANTIZED):
            # Share the quantized table as the head rather than packing a second copy.
            self.model.finalize()
            self.lm_head.weight = self.model.embed_tokens.weight
        else:
            if isinstance(self.lm_head.weight, Missing):
                self.lm_head.weight = table
            super().finalize()
        # The head is one large matmul: compiled, its one-row product streams the weight faster.
        self._compiled_head = self.ops.compile(type(self).head)

    def make_caches(self) -> list[KVCache]:
        return [KVCache(self.ops, window=a.window, heads=a.num_kv_heads, head_dim=a.head_dim)
                for a in self.spec.attention]

    def head(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)

    def __call__(self, ids: Tensor, caches: list[KVCache], last_only: bool = False) -> Tensor:
        hidden = self.model(ids, caches)
        if last_only:
            # Prefill needs only the last position's logits: skip the vocab matmul elsewhere.
            hidden = hidden[:, -1:, :]
        if self._compiled_head is not None and Linear.observer is None:
            return self._compiled_head(self, hidden)
        return self.head(hidden)
