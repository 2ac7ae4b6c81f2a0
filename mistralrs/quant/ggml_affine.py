"""GGML blocks seen as affine groups of 32: w = bias + q * scale, q an unsigned integer.

Most GGML formats are, underneath, 32-element groups with one scale and one
offset: Q4_0 is q*d - 8d, Q4_1 q*d + m, Q8_0 (q+128)*d - 128d, and the 256-wide
Q4_K / Q5_K super-blocks hold eight 32-element sub-blocks of d*sc and -dmin*m.
In this form they map exactly onto affine-quantized matmul kernels (MLX's
quantized_matmul, torch's int4 kernels), without going through floats.

Q2_K, Q3_K and Q6_K have 16-element sub-blocks, which the CPU and MLX kernels
do not take: `affine_groups` has no view of them, and those backends convert them
from their dequantized values. Our CUDA kernels take groups of 16, and
`sixteen_wide_groups` gives them the exact form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ggml_blocks
from .ggml_kquants import (
    _q2_k_scales,
    _q3_k_scales,
    _q3_k_values,
    _q6_k_scales,
    _q6_k_values,
    _unbits_by_32,
    _unpack_2bit,
    _unpack_nibbles_64,
    _unpack_scale_min_k4,
)
from .ggml_legacy import _unhigh, _unnibble, f16_value
from .qtensor import AfqTensor, GgmlTensor, QuantizedTensor

F32 = np.float32
GROUP = 32


@dataclass(frozen=True)
class AffineGroups:
    bits: int
    group_size: int
    q: np.ndarray  # uint8 (rows, cols), values < 2**bits
    scales: np.ndarray  # float32 (rows, cols / group_size)
    biases: np.ndarray  # float32 (rows, cols / group_size)

    def dequantize(self) -> np.ndarray:
        rows, cols = self.q.shape
        groups = self.q.reshape(rows, -1, self.group_size).astype(F32)
        return (groups * self.scales[..., None] + self.biases[..., None]).reshape(rows, cols)


def _legacy(b: np.ndarray, kind: str):
    """(q, scale, bias) per 32-element block for the legacy formats."""
    d = f16_value(b[:, 0:2])[:, 0]
    if kind == "Q4_0":
        return _unnibble(b[:, 2:18]), d, -8 * d
    if kind == "Q4_1":
        return _unnibble(b[:, 4:20]), d, f16_value(b[:, 2:4])[:, 0]
    if kind == "Q5_0":
        return _unnibble(b[:, 6:22]) | (_unhigh(b[:, 2:6]) << 4), d, -16 * d
    if kind == "Q5_1":
        return _unnibble(b[:, 8:24]) | (_unhigh(b[:, 4:8]) << 4), d, f16_value(b[:, 2:4])[:, 0]
    if kind == "Q8_K":  # a float32 d per 256 values, then the block sums (unused here)
        d = np.ascontiguousarray(b[:, 0:4]).view(F32)[:, 0]
        q = (np.ascontiguousarray(b[:, 4:260]).view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        d = np.repeat(d, 256 // GROUP)
        return q.reshape(-1, GROUP), d, -128 * d
    offset = 2 if kind == "Q8_0" else 4  # Q8_1 stores d and the block sum
    q = (np.ascontiguousarray(b[:, offset:]).view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return q, d, -128 * d


def _k_quant(b: np.ndarray, kind: str):
    """(q, scale, bias) per 32-element sub-block of Q4_K / Q5_K super-blocks."""
    d, dmin = f16_value(b[:, 0:2]), f16_value(b[:, 2:4])
    sc, mn = _unpack_scale_min_k4(b[:, 4:16])
    if kind == "Q4_K":
        q = _unpack_nibbles_64(b[:, 16:144])
    else:
        q = _unpack_nibbles_64(b[:, 48:176]) | _unbits_by_32(b[:, 16:48]) << 4
    # Same float products as ggml's dequantizer: d * sc and dmin * m in float32.
    return q.reshape(-1, GROUP), (d * sc.astype(F32)).reshape(-1), -(dmin * mn.astype(F32)).reshape(-1)


AFFINE_BITS = {"Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "Q5_0": 5, "Q5_1": 5, "Q5_K": 5, "Q8_0": 8, "Q8_1": 8, "Q8_K": 8}


def affine_groups(t: QuantizedTensor) -> AffineGroups | None:
    """The exact affine form of `t`, or None for formats with 16-wide sub-blocks."""
    if isinstance(t, AfqTensor):
        from .qtensor import unpack_bits

        return AffineGroups(t.bits, t.group_size, unpack_bits(t.weight, t.bits, t.shape[1]), t.scales, t.biases)
    if t.kind not in AFFINE_BITS:
        return None
    rows, cols = t.shape
    blocks = np.ascontiguousarray(t.data).reshape(-1, ggml_blocks.type_size(t.kind))
    q, scale, bias = (_k_quant if t.kind in ("Q4_K", "Q5_K") else _legacy)(blocks, t.kind)
    return AffineGroups(
        AFFINE_BITS[t.kind], GROUP,
        np.ascontiguousarray(q, dtype=np.uint8).reshape(rows, cols),
        scale.astype(F32).reshape(rows, cols // GROUP),
        bias.astype(F32).reshape(rows, cols // GROUP),
    )


SIXTEEN_WIDE_BITS = {"Q2_K": 2, "Q3_K": 3, "Q6_K": 6}


def _sixteen_wide(b: np.ndarray, kind: str):
    """(q, scale, bias) per 16-element sub-block of Q2_K / Q3_K / Q6_K super-blocks; q unsigned."""
    if kind == "Q2_K":
        scale, minimum = _q2_k_scales(b)
        return _unpack_2bit(b[:, 16:80]), scale, -minimum
    if kind == "Q3_K":  # ggml's value is q - 4
        scale = _q3_k_scales(b)
        return _q3_k_values(b), scale, -4 * scale
    scale = _q6_k_scales(b)  # Q6_K: ggml's value is q - 32
    return _q6_k_values(b), scale, -32 * scale


def sixteen_wide_groups(t: QuantizedTensor) -> AffineGroups | None:
    """The affine form of Q2_K, Q3_K and Q6_K, groups of 16 (None for other formats). Equal to
    ggml's dequantized values up to float32 rounding: scale * (q + c) is computed as
    scale * q + (scale * c)."""
    if not isinstance(t, GgmlTensor) or t.kind not in SIXTEEN_WIDE_BITS:
        return None
    rows, cols = t.shape
    blocks = np.ascontiguousarray(t.data).reshape(-1, ggml_blocks.type_size(t.kind))
    q, scale, bias = _sixteen_wide(blocks, t.kind)
    return AffineGroups(
        SIXTEEN_WIDE_BITS[t.kind], 16,
        np.ascontiguousarray(q, dtype=np.uint8).reshape(rows, cols),
        scale.astype(F32).reshape(rows, cols // 16),
        bias.astype(F32).reshape(rows, cols // 16),
    )


def is_affine(t: QuantizedTensor) -> bool:
    return isinstance(t, AfqTensor) or (isinstance(t, GgmlTensor) and t.kind in AFFINE_BITS)
