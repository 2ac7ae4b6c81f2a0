"""Quantized linear weights on CUDA: packed on the GPU, multiplied by Triton kernels.

Every quantized format has an exact affine form, w = scale * q + bias per group of
columns (quant.ggml_affine: groups of 32 for the legacy formats, Q4_K, Q5_K, Q8_K and
AFQ's 32/64/128, groups of 16 for Q2_K, Q3_K and Q6_K). On the GPU a weight keeps
that form: values of at most 4 bits two to a byte, wider ones a byte each, and one
scale and bias per group in float16 (float32 where float16 would not hold them).

- Decode (a few rows of activations) runs `triton_affine.affine_matvec`, which reads
  the packed weight once per row: the weight-read cost of the quantized size.
- Prompt chunks are compute-bound: the weight is dequantized into the compute dtype
  by a Triton kernel, for that call only, and the product goes to cuBLAS.

Triton ships with torch's CUDA builds for Linux; without it (or with an unusual group
size) the weight is dequantized once at load instead, and the load log says so.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from mistralrs.quant.ggml_affine import (
    AFFINE_BITS,
    SIXTEEN_WIDE_BITS,
    AffineGroups,
    affine_groups,
    sixteen_wide_groups,
)
from mistralrs.quant.ggml_affine import GROUP as GGML_GROUP
from mistralrs.quant.qtensor import AfqTensor, QuantizedTensor

# Up to this many rows of activations the fused kernel runs; from here on the dense product.
# llama.cpp switches from its quantized matrix-vector kernels at 8 rows as well.
KERNEL_UNTIL_ROWS = 8
GROUP_SIZES = (16, 32, 64, 128, 256)
FLOAT16_MAX = float(np.finfo(np.float16).max)


@functools.cache
def triton_unavailable_reason() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (it comes with torch's CUDA builds for Linux; or `pip install triton`)"
    return None


def group_size(q: QuantizedTensor) -> int | None:
    """The width of `q`'s affine groups, read from its format (nothing is unpacked)."""
    if isinstance(q, AfqTensor):
        return q.group_size
    if q.kind in AFFINE_BITS:
        return GGML_GROUP
    return 16 if q.kind in SIXTEEN_WIDE_BITS else None


def fits(q: QuantizedTensor) -> bool:
    """Whether the kernels take `q` as it is."""
    size = group_size(q)
    return size in GROUP_SIZES and q.shape[1] % size == 0


class CudaQuantWeight:
    """An affine-quantized weight on a CUDA device (or, for the tests, any device Triton's
    interpreter runs on)."""

    def __init__(self, groups: AffineGroups, device: torch.device):
        from mistralrs.backends import triton_affine  # needs Triton: imported once a weight is built

        self.kernels = triton_affine
        self.out_features, self.in_features = groups.q.shape
        self.group_size, self.bits = groups.group_size, groups.bits
        self.packed = groups.bits <= 4
        values = groups.q
        if self.packed:
            values = (values[:, 0::2] | (values[:, 1::2] << 4)).astype(np.uint8)
        self.values = torch.from_numpy(np.ascontiguousarray(values)).to(device)
        # float16 halves the metadata's reads; scales or biases beyond its range keep float32.
        wide = max(np.abs(groups.scales).max(initial=0), np.abs(groups.biases).max(initial=0)) > FLOAT16_MAX / 2
        dtype = np.float32 if wide else np.float16
        self.scales = torch.from_numpy(groups.scales.astype(dtype)).to(device)
        self.biases = torch.from_numpy(groups.biases.astype(dtype)).to(device)

    @classmethod
    def from_quantized(cls, q: QuantizedTensor, device: torch.device) -> CudaQuantWeight | None:
        """None when `q` has no affine form that the kernels take."""
        return cls(affine_groups(q) or sixteen_wide_groups(q), device) if fits(q) else None

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        out = torch.empty(self.out_features, self.in_features, dtype=dtype, device=self.values.device)
        self.kernels.affine_dequantize(self.values, self.scales, self.biases, out, self.group_size, self.packed)
        return out

    def matmul(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.shape[0] > KERNEL_UNTIL_ROWS:
            return F.linear(rows, self.dense(rows.dtype))
        out = torch.empty(rows.shape[0], self.out_features, dtype=rows.dtype, device=rows.device)
        self.kernels.affine_matvec(rows, self.values, self.scales, self.biases, out, self.group_size, self.packed)
        return out

    def __call__(self, x, bias):
        rows = x.reshape(-1, self.in_features).contiguous()
        y = self.matmul(rows).reshape(*x.shape[:-1], self.out_features)
        return y if bias is None else y + bias

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.scales, self.biases))
