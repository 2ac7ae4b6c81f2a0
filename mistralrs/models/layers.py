"""Attention and MLP blocks shared by the decoder architectures.

Each architecture file describes its differences (biases, q/k norms, windows,
activations, fused checkpoint tensors) through the small spec objects here and
reuses the same code path, so a fix or a speed-up lands everywhere at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from mistralrs.backends.ops import Ops, Tensor
from mistralrs.errors import ModelLoadError
from mistralrs.models.base import Linear, Module, RMSNorm, fuse_linears
from mistralrs.models.cache import KVCache
from mistralrs.models.rope import RopeSpec


@dataclass
class AttentionSpec:
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope: RopeSpec
    scale: float
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm_eps: float | None = None  # Qwen3 / Gemma 3 normalise q and k per head
    norm_offset: float = 0.0  # Gemma's "1 + w" RMSNorm convention
    window: int | None = None  # sliding-window attention
    fused_qkv_checkpoint: bool = False  # Phi-3 stores one qkv_proj tensor


class Attention(Module):
    def __init__(self, ops: Ops, spec: AttentionSpec):
        super().__init__(ops)
        self.spec = spec
        q_out = spec.num_heads * spec.head_dim
        kv_out = spec.num_kv_heads * spec.head_dim
        self.split_sizes = [q_out, kv_out, kv_out]
        if spec.fused_qkv_checkpoint:
            self.qkv_proj = Linear(ops, spec.hidden_size, q_out + 2 * kv_out, bias=spec.qkv_bias)
        else:
            self.q_proj = Linear(ops, spec.hidden_size, q_out, bias=spec.qkv_bias)
            self.k_proj = Linear(ops, spec.hidden_size, kv_out, bias=spec.qkv_bias)
            self.v_proj = Linear(ops, spec.hidden_size, kv_out, bias=spec.qkv_bias)
        self.o_proj = Linear(ops, q_out, spec.hidden_size, bias=spec.o_bias)
        if spec.qk_norm_eps is not None:
            self.q_norm = RMSNorm(ops, spec.head_dim, spec.qk_norm_eps, spec.norm_offset)
            self.k_norm = RMSNorm(ops, spec.head_dim, spec.qk_norm_eps, spec.norm_offset)

    def finalize(self) -> None:
        # Fuse before the children finalize: a finalized Linear may hold a re-laid weight.
        if not self.spec.fused_qkv_checkpoint:
            self.qkv_proj = fuse_linears(self.ops, [self.q_proj, self.k_proj, self.v_proj])
            del self.q_proj, self.k_proj, self.v_proj
        super().finalize()
        rope = self.spec.rope
        self._short = (self.ops.asarray(rope.inv_freq, "float32"), rope.attention_scale)
        self._long = (
            None
            if rope.long_inv_freq is None
            else (self.ops.asarray(rope.long_inv_freq, "float32"), rope.long_attention_scale)
        )

    def __call__(self, x: Tensor, cache: KVCache) -> Tensor:
        ops, spec = self.ops, self.spec
        batch, length, _ = x.shape
        q, k, v = ops.split(self.qkv_proj(x), self.split_sizes, axis=-1)
        q = q.reshape(batch, length, spec.num_heads, spec.head_dim)
        k = k.reshape(batch, length, spec.num_kv_heads, spec.head_dim)
        v = v.reshape(batch, length, spec.num_kv_heads, spec.head_dim)
        if spec.qk_norm_eps is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = ops.transpose(q, (0, 2, 1, 3))
        k = ops.transpose(k, (0, 2, 1, 3))
        v = ops.transpose(v, (0, 2, 1, 3))
        offset = cache.offset  # an int, or per-row positions when the cache holds a batch
        inv_freq, rope_scale = self._short
        long_rows = None
        if self._long is not None:
            # longrope switches to its long factors once a sequence outgrows the original context;
            # in a batch each row decides for itself, so batching does not change its numbers.
            beyond = cache.rows_beyond(spec.rope.original_max_position - length)
            if hasattr(beyond, "shape"):  # rows disagree: a per-row boolean tensor
                long_rows = beyond
            elif beyond:  # (a plain bool, or a symbolic one inside compiled code)
                inv_freq, rope_scale = self._long
        if long_rows is not None:
            q = ops.where(long_rows, ops.rope(q, offset, *self._long), ops.rope(q, offset, inv_freq, rope_scale))
            k = ops.where(long_rows, ops.rope(k, offset, *self._long), ops.rope(k, offset, inv_freq, rope_scale))
        else:
            q = ops.rope(q, offset, inv_freq, rope_scale)
            k = ops.rope(k, offset, inv_freq, rope_scale)
        keys, values, mask = cache.update_and_fetch(k, v)
        out = ops.attention(q, keys, values, spec.scale, mask)
        out = ops.transpose(out, (0, 2, 1, 3)).reshape(batch, length, spec.num_heads * spec.head_dim)
        return self.o_proj(out)


class GatedMLP(Module):
    """act(gate(x)) * up(x) -> down: SwiGLU (Llama family) or GeGLU (Gemma)."""

    def __init__(self, ops: Ops, hidden: int, intermediate: int, activation: str, fused_checkpoint=False, bias=False):
        super().__init__(ops)
        self.intermediate = intermediate
        self.fused_checkpoint = fused_checkpoint
        if fused_checkpoint:
            self.gate_up_proj = Linear(ops, hidden, 2 * intermediate, bias=bias)
        else:
            self.gate_proj = Linear(ops, hidden, intermediate, bias=bias)
            self.up_proj = Linear(ops, hidden, intermediate, bias=bias)
        self.down_proj = Linear(ops, intermediate, hidden, bias=bias)
        self.act = _activation(ops, activation)

    def finalize(self) -> None:
        if not self.fused_checkpoint:
            self.gate_up_proj = fuse_linears(self.ops, [self.gate_proj, self.up_proj])
            del self.gate_proj, self.up_proj
        super().finalize()

    def __call__(self, x: Tensor) -> Tensor:
        gate, up = self.ops.split(self.gate_up_proj(x), [self.intermediate, self.intermediate], axis=-1)
        return self.down_proj(self.act(gate) * up)


ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
}


def _activation(ops: Ops, name: str):
    if name not in ACTIVATIONS:
        raise ModelLoadError(
            f"config.json names the activation `{name}`, which mistralrs does not implement; "
            f"supported: {', '.join(sorted(ACTIVATIONS))}."
        )
    return getattr(ops, ACTIVATIONS[name])
