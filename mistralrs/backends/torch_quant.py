"""Quantized linear weights for the torch backend.

On the CPU two of torch's packed integer kernels do the work, both fast only with
bfloat16 activations (their float32 paths are ~10x slower, measured):

- `_weight_int4pack_mm_for_cpu`: 4-bit values in groups of 32/64/128 with a scale
  and a zero per group, w = (q - 8) * scale + zero. Every affine format of at most
  4 bits maps onto it exactly (Q4_0, Q4_1, Q4_K, AFQ2-4), up to the bfloat16
  rounding of scales and zeros.
- `_weight_int8pack_mm`: int8 values with one scale per output row. Every other
  format (Q5_*, Q6_K, Q8_0, Q2_K/Q3_K's 16-wide groups, AFQ6/8) is dequantized and
  requantized to it at load: per-row int8 keeps ~8 bits of the already-quantized
  values, so the extra error is small next to the format's own.

Decode (a few rows of activations) runs the packed kernels, which read a quarter
or half of the bytes of bfloat16. A prompt chunk of many rows is compute-bound,
where the packed kernels are slower than a dense bfloat16 matmul, so there the
weight is dequantized to bfloat16 for the one call.

On CUDA the weight is dequantized once at load to the compute dtype: correct, not
a memory saving (no CUDA kernel path has been verified here yet).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mistralrs.quant.ggml_affine import affine_groups
from mistralrs.quant.qtensor import QuantizedTensor

COMPUTE = torch.bfloat16
INT4_GROUP_SIZES = (32, 64, 128, 256)
# Rows of activations from which a dense bfloat16 matmul beats the packed kernels.
DENSE_FROM_ROWS = 64


def cpu_layout(q: QuantizedTensor) -> str:
    """Which kernel `q` runs on, and whether the mapping is exact (for the load log)."""
    groups = affine_groups(q)
    if groups is not None and groups.bits <= 4 and groups.group_size in INT4_GROUP_SIZES:
        return "int4"
    return "int8"


def prepare_cpu(q: QuantizedTensor):
    if cpu_layout(q) == "int4":
        return Int4Weight(q)
    return Int8Weight(q)


class Int4Weight:
    """4-bit groups for `_weight_int4pack_mm_for_cpu` (exact for affine formats of <= 4 bits)."""

    def __init__(self, q: QuantizedTensor):
        groups = affine_groups(q)
        self.out_features, self.in_features = q.shape
        self.group_size = groups.group_size
        # The kernel computes (v - 8) * scale + zero. Values of fewer than 4 bits are shifted to
        # the middle of the 4-bit range, so the zero sits mid-group and its bfloat16 rounding
        # stays small: v = q + 8 - half, zero = bias + half * scale, half = 2**(bits - 1).
        half = 1 << (groups.bits - 1)
        values = torch.from_numpy(groups.q.astype(np.int32) + (8 - half))
        scales = torch.from_numpy(groups.scales)
        zeros = torch.from_numpy(groups.biases) + half * scales
        self.packed = torch._convert_weight_to_int4pack_for_cpu(values, 1)
        self.scales_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous().to(COMPUTE)

    def __call__(self, x, bias):
        rows = x.reshape(-1, self.in_features).to(COMPUTE)
        if rows.shape[0] >= DENSE_FROM_ROWS and self.out_features % 64 == 0:
            y = F.linear(rows, self.dense())
        else:
            y = torch._weight_int4pack_mm_for_cpu(rows, self.packed, self.group_size, self.scales_zeros)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if bias is None else y + bias

    def dense(self) -> torch.Tensor:
        """The bfloat16 weight, unpacked from the kernel's layout.

        `_convert_weight_to_int4pack_for_cpu` stores blocks of 64 output rows; in a
        block, each input column is 32 bytes whose low nibbles are rows 0-31 and
        high nibbles rows 32-63 (read off torch 2.13; tests check it).
        """
        n, k = self.out_features, self.in_features
        b = self.packed.reshape(n // 64, k, 32)
        q = torch.cat([b & 15, b >> 4], dim=-1).transpose(1, 2).reshape(n, k)
        groups = (q.to(COMPUTE) - 8).reshape(n, k // self.group_size, self.group_size)
        scales = self.scales_zeros[..., 0].t()[..., None]
        zeros = self.scales_zeros[..., 1].t()[..., None]
        return (groups * scales + zeros).reshape(n, k)


class Int8Weight:
    """int8 with one scale per output row, for `_weight_int8pack_mm`."""

    def __init__(self, q: QuantizedTensor):
        w = q.dequantize()
        self.out_features, self.in_features = w.shape
        absmax = np.abs(w).max(axis=1)
        scales = np.where(absmax > 0, absmax / 127, 1).astype(np.float32)
        values = np.clip(np.rint(w / scales[:, None]), -127, 127).astype(np.int8)
        self.values = torch.from_numpy(values)
        self.scales = torch.from_numpy(scales).to(COMPUTE)

    def rows(self, ids):
        """Embedding lookup: the dequantized rows `ids` (bfloat16)."""
        return self.values[ids].to(COMPUTE) * self.scales[ids][..., None]

    def __call__(self, x, bias):
        rows = x.reshape(-1, self.in_features).to(COMPUTE)
        if rows.shape[0] >= DENSE_FROM_ROWS:
            y = F.linear(rows, self.values.to(COMPUTE) * self.scales[:, None])
        else:
            y = torch._weight_int8pack_mm(rows, self.values, self.scales)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if bias is None else y + bias


def prepare_dense(q: QuantizedTensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(q.dequantize()).to(device=device, dtype=dtype)
