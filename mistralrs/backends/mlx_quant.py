"""Quantized linear weights for the MLX backend, run by `mx.quantized_matmul`.

MLX quantizes in affine groups (w = bias + q * scale, groups of 32/64/128, 2-8
bits). AFQ tensors are that format already, and the GGML formats whose
sub-blocks are 32 wide (Q4_0/1, Q5_0/1, Q8_0/1, Q4_K, Q5_K, Q8_K) map onto it
value for value (`quant.ggml_affine`). Q2_K, Q3_K and Q6_K scale every 16
values, which MLX cannot express; they are requantized at load from their exact
dequantized values with more bits (Q2_K and Q3_K to 6, Q6_K to 8), so little
precision is lost.
"""

from __future__ import annotations

import mlx.core as mx

from mistralrs.quant.ggml_affine import affine_groups
from mistralrs.quant.qtensor import QuantizedTensor, pack_bits
from mistralrs.quant.resident import MLX_REQUANTIZED_BITS, MLX_REQUANTIZED_GROUP


def layout(q: QuantizedTensor) -> str | None:
    if affine_groups(q) is not None:
        return None
    return f"requantized to {MLX_REQUANTIZED_BITS[q.kind]}-bit MLX groups of 32 (MLX has no 16-wide groups)"


def prepare(q: QuantizedTensor, dtype) -> QuantizedWeight:
    groups = affine_groups(q)
    if groups is None:
        bits, group_size = MLX_REQUANTIZED_BITS[q.kind], MLX_REQUANTIZED_GROUP
        weight, scales, biases = mx.quantize(mx.array(q.dequantize()), group_size=group_size, bits=bits)
    else:
        bits, group_size = groups.bits, groups.group_size
        weight = mx.array(pack_bits(groups.q, bits))
        scales, biases = mx.array(groups.scales), mx.array(groups.biases)
    # Scales in the activations' dtype: mixed dtypes would promote the whole matmul to float32.
    prepared = QuantizedWeight(weight, scales.astype(dtype), biases.astype(dtype), group_size, bits)
    mx.eval(prepared.weight, prepared.scales, prepared.biases)
    return prepared


class QuantizedWeight:
    __slots__ = ("weight", "scales", "biases", "group_size", "bits")

    def __init__(self, weight, scales, biases, group_size: int, bits: int):
        self.weight, self.scales, self.biases = weight, scales, biases
        self.group_size, self.bits = group_size, bits

    def rows(self, ids):
        """Embedding lookup: gather the packed rows, then dequantize only those."""
        return mx.dequantize(self.weight[ids], self.scales[ids], self.biases[ids],
                             group_size=self.group_size, bits=self.bits)

    def out_features(self) -> int:
        return self.weight.shape[0]

    def output_rows(self, start: int, stop: int) -> QuantizedWeight:
        """The weight of output features start..stop (views, no copy)."""
        return QuantizedWeight(self.weight[start:stop], self.scales[start:stop], self.biases[start:stop],
                               self.group_size, self.bits)

    def __call__(self, x, bias):
        y = mx.quantized_matmul(x, self.weight, self.scales, self.biases, transpose=True,
                                group_size=self.group_size, bits=self.bits)
        return y if bias is None else y + bias
