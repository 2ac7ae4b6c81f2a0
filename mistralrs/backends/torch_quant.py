"""Quantized linear weights for the torch backend.

On the CPU two of torch's packed integer kernels do the work, both fast only with
bfloat16 activations (their float32 paths are ~10x slower, measured):

- `_weight_int4pack_mm_for_cpu`: 4-bit values in groups of 32/64/128/256 with a
  scale and a zero per group, w = (v - 8) * scale + zero. Every affine format of at
  most 4 bits maps onto it exactly (Q4_0, Q4_1, Q4_K, AFQ2-4), and the 5- to 8-bit
  affine formats (Q5_*, Q8_0, Q8_K, AFQ6/8) exactly as the sum of two such matrices
  (`SplitInt4Weight`), up to the bfloat16 rounding of scales and zeros.
- `_weight_int8pack_mm`: int8 values with one scale per output row. The formats
  with 16-wide groups (Q2_K, Q3_K, Q6_K) are dequantized and requantized to it at
  load; per-row int8 keeps ~8 bits of the values, a small error next to theirs.
  Embedding tables use it too, as rows of int8 are cheap to gather.

Decode (a few rows of activations) runs the packed kernels, which read a quarter
to a half of the bytes of bfloat16. A prompt chunk of many rows is compute-bound,
where the packed kernels are slower than a dense bfloat16 matmul, so there the
weight is dequantized to bfloat16 for the one call.

On CPUs where our own streaming kernels run (torch_cpu_kernels: x86-64 CPUs with
AVX2), the affine formats go to them instead (`StreamingQuantWeight`):
exact values, float16 scales and biases, and for decode about twice the speed of
torch's int4 kernel there; per-row int8 tables stream through them too. Their
prompt chunks multiply the dequantized weight in bfloat16 on CPUs that have it,
except 8-bit weights, whose precision needs float32 results: on CPUs with AMX our
own prompt product keeps AMX's float32 sums, elsewhere the product runs in float32.

On CUDA, torch_cuda_quant keeps the weight packed and multiplies it with Triton kernels.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from mistralrs.backends import torch_cpu_kernels
from mistralrs.backends.torch_cpu_linear import PROMPT_DTYPE, STREAM_UNTIL_ROWS
from mistralrs.quant.ggml_affine import AffineGroups, affine_groups
from mistralrs.quant.qtensor import QuantizedTensor
from mistralrs.quant.resident import TORCH_INT4_GROUP_SIZES

COMPUTE = torch.bfloat16
INT4_GROUP_SIZES = TORCH_INT4_GROUP_SIZES
# Rows of activations from which a dense bfloat16 matmul beats the packed kernels.
DENSE_FROM_ROWS = 64


def cpu_layout(q: QuantizedTensor) -> str:
    """Which kernel `q` runs on: "streaming" (ours, exact values), "int4" (exact), "split-int4"
    (exact, two int4 products) or "int8"."""
    return _layout(affine_groups(q))


def _layout(groups: AffineGroups | None) -> str:
    if groups is not None and StreamingQuantWeight.fits(groups) and torch_cpu_kernels.available():
        return "streaming"
    if groups is None or groups.group_size not in INT4_GROUP_SIZES:
        return "int8"
    return "int4" if groups.bits <= 4 else "split-int4"


def prepare_cpu(q: QuantizedTensor):
    groups = affine_groups(q)  # unpacked once: it reads the whole tensor
    layout = _layout(groups)
    if layout == "streaming":
        weight = StreamingQuantWeight.from_groups(groups)
        if weight is not None:
            return weight
        layout = "int4" if groups.bits <= 4 else "split-int4"  # scales beyond float16
    if layout == "int4":
        return Int4Weight.from_groups(groups)
    if layout == "split-int4":
        return SplitInt4Weight(groups)
    return Int8Weight(q)


class Int4Weight:
    """4-bit groups for `_weight_int4pack_mm_for_cpu`: w = (v - 8) * scale + zero, v in 0..15."""

    def __init__(self, values: np.ndarray, scales: np.ndarray, zeros: np.ndarray, group_size: int):
        self.out_features, self.in_features = values.shape
        self.group_size = group_size
        self.packed = torch._convert_weight_to_int4pack_for_cpu(torch.from_numpy(values.astype(np.int32)), 1)
        self.block_rows = int4_block_rows()  # looked up here, not in the (compiled) forward
        pairs = np.stack([scales, zeros], axis=-1).transpose(1, 0, 2)  # (groups, out, 2), as the kernel wants
        self.scales_zeros = torch.from_numpy(np.ascontiguousarray(pairs, dtype=np.float32)).to(COMPUTE)

    @classmethod
    def from_groups(cls, groups: AffineGroups) -> Int4Weight:
        """Exact for affine groups of at most 4 bits. Values of fewer bits are shifted to the
        middle of the 4-bit range, so the zero sits mid-group and its bfloat16 rounding stays
        small: v = q + 8 - half, zero = bias + half * scale, half = 2**(bits - 1)."""
        half = 1 << (groups.bits - 1)
        return cls(groups.q.astype(np.int32) + (8 - half), groups.scales, groups.biases + half * groups.scales,
                   groups.group_size)

    def matmul(self, rows):
        """bfloat16 rows (M, in) -> (M, out): the packed kernel, or for many rows a dense matmul."""
        if rows.shape[0] >= DENSE_FROM_ROWS and self.unpackable():
            return _dense_product(rows, self.dense(PROMPT_DTYPE))
        return torch._weight_int4pack_mm_for_cpu(rows, self.packed, self.group_size, self.scales_zeros)

    def __call__(self, x, bias):
        return _apply(self, x, bias)

    def unpackable(self) -> bool:
        """Whether `dense` can read this weight back (known layout, whole blocks of rows)."""
        return self.block_rows is not None and self.out_features % self.block_rows == 0

    def dense(self, dtype: torch.dtype = COMPUTE) -> torch.Tensor:
        """The weight in `dtype`, unpacked from the kernel's layout (see `int4_block_rows`)."""
        n, k = self.out_features, self.in_features
        q = _unpack_int4(self.packed, n, k, self.block_rows)
        groups = (q.to(dtype) - 8).reshape(n, k // self.group_size, self.group_size)
        scales = self.scales_zeros[..., 0].t()[..., None].to(dtype)
        zeros = self.scales_zeros[..., 1].t()[..., None].to(dtype)
        return (groups * scales + zeros).reshape(n, k)


def _unpack_int4(packed: torch.Tensor, n: int, k: int, block: int) -> torch.Tensor:
    """4-bit values (n, k) from `_convert_weight_to_int4pack_for_cpu`'s layout with `block`-row blocks."""
    b = packed.reshape(n // block, k, block // 2)
    return torch.cat([b & 15, b >> 4], dim=-1).transpose(1, 2).reshape(n, k)


@functools.cache
def int4_block_rows() -> int | None:
    """Rows per block of `_convert_weight_to_int4pack_for_cpu`'s layout on this CPU, or None.

    The packing follows the CPU's vector width: blocks of 64 output rows with AVX-512,
    32 with AVX2; in a block, each input column is block/2 bytes whose low nibbles are
    the first half of the rows and whose high nibbles the second (torch 2.13). Found
    by packing a probe rather than assumed, since a wrong guess would silently scramble
    every prompt's weights; with an unknown layout prompts run the packed kernel too.
    """
    probe = torch.randint(0, 16, (128, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    packed = torch._convert_weight_to_int4pack_for_cpu(probe, 1)
    if packed.numel() != probe.numel() // 2:
        return None
    return next((block for block in (64, 32) if torch.equal(_unpack_int4(packed, 128, 64, block).int(), probe)), None)


class SplitInt4Weight:
    """5- to 8-bit affine groups, exactly, as the sum of two 4-bit matrices.

    With u = 16 h + l (h the high nibble, l the low one), bias + u * s is
    16 s (h - c) + (bias + 16 s c + l s): two int4 products over the same rows. c
    centres the high part (8 for 8-bit values, 0 when h is 0 or 1) so neither part
    carries a large zero whose bfloat16 rounding would shift every weight of its group.
    Measured against requantizing to per-row int8 on the 134.5 M benchmark model: the
    same decode speed (48.6 vs 44.0 tok/s; 53.9 vs 59.1 at hidden 512), and Q8_0 costs
    SmolLM2 +0.8 % perplexity instead of +3.2 %.
    """

    def __init__(self, groups: AffineGroups):
        high, low = groups.q >> 4, groups.q & 15
        centre = 8 if groups.bits == 8 else 0
        s = groups.scales
        self.high = Int4Weight(high.astype(np.int32) + (8 - centre), 16 * s, np.zeros_like(s), groups.group_size)
        self.low = Int4Weight(low, s, groups.biases + 16 * centre * s + 8 * s, groups.group_size)
        self.out_features, self.in_features = groups.q.shape

    def matmul(self, rows):
        if rows.shape[0] >= DENSE_FROM_ROWS and self.high.unpackable():
            return _dense_product(rows, self.dense(PROMPT_DTYPE))
        return self.high.matmul(rows) + self.low.matmul(rows)

    def __call__(self, x, bias):
        return _apply(self, x, bias)

    def dense(self, dtype: torch.dtype = COMPUTE) -> torch.Tensor:
        return self.high.dense(dtype) + self.low.dense(dtype)


def _apply(weight, x, bias):
    rows = x.reshape(-1, weight.in_features).to(COMPUTE)
    y = weight.matmul(rows).to(x.dtype).reshape(*x.shape[:-1], weight.out_features)
    return y if bias is None else y + bias


class StreamingQuantWeight:
    """Affine groups (w = scale * q + bias, q unsigned, groups of 32 or more) in the layout of
    our streaming kernels: 4-bit values two to a byte, wider ones a byte each, float16 scales
    and biases. Few rows go to the kernels; prompt chunks dequantize the weight for one matmul."""

    def __init__(self, values, scale_bias, group_size: int, bits: int, shape):
        self.values, self.scale_bias = values, scale_bias
        self.group_size, self.bits = group_size, bits
        self.out_features, self.in_features = shape
        # 8-bit prompt chunks on AMX, with float32 results (see `matmul`).
        self.amx = (bits == 8 and torch_cpu_kernels.prompt_product_fits(*shape, group_size)
                    and torch_cpu_kernels.amx_ready())

    @staticmethod
    def fits(groups: AffineGroups) -> bool:
        return torch_cpu_kernels.quantized_fits(*groups.q.shape, groups.group_size, groups.bits)

    @classmethod
    def from_groups(cls, groups: AffineGroups) -> StreamingQuantWeight | None:
        """None when the scales do not survive float16 (see `repack_quantized`)."""
        packed = torch_cpu_kernels.repack_quantized(groups.q, groups.scales, groups.biases, groups.group_size,
                                                    groups.bits)
        return None if packed is None else cls(*packed, groups.group_size, groups.bits, groups.q.shape)

    def matmul(self, rows):
        if rows.shape[0] >= STREAM_UNTIL_ROWS:
            # 8-bit weights lose their precision to products with bfloat16 results: Q8_0 cost
            # SmolLM2 +1.0 % perplexity against bf16 (fp32 compute) where float32 results give +0.2 %.
            # AMX sums bfloat16 parts in float32 (about twice float32's speed); elsewhere, float32.
            if self.amx:
                return torch_cpu_kernels.prompt_product_q8(rows.float().contiguous(), self.values, self.scale_bias,
                                                           self.group_size, self.in_features)
            return _dense_product(rows, self.dense(torch.float32 if self.bits == 8 else PROMPT_DTYPE))
        return torch_cpu_kernels.matvec_quantized(rows.contiguous(), self.values, self.scale_bias, self.group_size,
                                                  self.in_features, self.bits)

    def dense(self, dtype: torch.dtype = COMPUTE) -> torch.Tensor:
        return torch_cpu_kernels.unpack_quantized(self.values, self.scale_bias, self.group_size, self.in_features,
                                                  self.bits, dtype)

    def __call__(self, x, bias):
        rows = x.reshape(-1, self.in_features)
        if rows.dtype not in (torch.float32, torch.bfloat16):
            rows = rows.float()
        y = self.matmul(rows).to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if bias is None else y + bias


class Int8Weight:
    """int8 with one scale per output row, for `_weight_int8pack_mm`; where our streaming
    kernels run, the same values (shifted to unsigned) stream through them instead."""

    def __init__(self, q: QuantizedTensor):
        w = q.dequantize()
        self.out_features, self.in_features = w.shape
        absmax = np.abs(w).max(axis=1)
        scales = np.where(absmax > 0, absmax / 127, 1).astype(np.float32)
        values = np.clip(np.rint(w / scales[:, None]), -127, 127).astype(np.int8)
        self.scales = torch.from_numpy(scales).to(COMPUTE)
        self.streaming = None
        rows, cols = values.shape
        if torch_cpu_kernels.quantized_fits(rows, cols, cols, 8) and torch_cpu_kernels.available():
            unsigned = (values.astype(np.int16) + 128).astype(np.uint8)
            scale = self.scales.float().numpy()[:, None]
            self.streaming = StreamingQuantWeight.from_groups(AffineGroups(8, cols, unsigned, scale, -128 * scale))
        # One copy of the values: the streaming layout serves lookups too.
        self.values = torch.from_numpy(values) if self.streaming is None else None

    def rows(self, ids):
        """Embedding lookup: the dequantized rows `ids` (bfloat16)."""
        if self.streaming is None:
            return self.values[ids].to(COMPUTE) * self.scales[ids][..., None]
        n = torch_cpu_kernels.ROWS
        blocks = self.streaming.values.view(self.out_features // n, self.in_features // 32, n, 32)
        unsigned = blocks[ids // n, :, ids % n, :].reshape(*ids.shape, self.in_features)
        return (unsigned.to(COMPUTE) - 128) * self.scales[ids][..., None]

    def __call__(self, x, bias):
        if self.streaming is not None:
            return self.streaming(x, bias)
        rows = x.reshape(-1, self.in_features).to(COMPUTE)
        if rows.shape[0] >= DENSE_FROM_ROWS:
            y = _dense_product(rows, self.values.to(PROMPT_DTYPE) * self.scales[:, None].to(PROMPT_DTYPE))
        else:
            y = torch._weight_int8pack_mm(rows, self.values, self.scales)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if bias is None else y + bias


def _dense_product(rows: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Prompt rows times a weight dequantized for the call, in bfloat16 or, on CPUs without
    native bfloat16 (torch_cpu_linear.NATIVE_BF16), float32."""
    return F.linear(rows.to(dense.dtype), dense).to(rows.dtype)


def prepare_dense(q: QuantizedTensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(q.dequantize()).to(device=device, dtype=dtype)
