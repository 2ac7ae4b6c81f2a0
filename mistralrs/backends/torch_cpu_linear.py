"""Dense linear weights on the CPU, prepacked once at load time for oneDNN.

Decode reads every weight once per token, so it runs at the speed its
matrix-vector kernel streams memory; prefill is compute-bound. Measured on a
2-core AMD EPYC (Zen 4) VM whose memory streams ~33 GB/s, on the 134.5 M
benchmark model's shapes: oneDNN with a prepacked weight streams ~20 GB/s in
bfloat16 and ~18 GB/s in float32 at decode, where `F.linear` and `torch.mv`
(through the MKL torch ships) manage 9-13 GB/s; in prefill it reaches ~200
GFLOP/s per core in bfloat16.

numpy's OpenBLAS is faster in float32 on this machine (26 GB/s, ~200 GFLOP/s),
but its threads and torch's OpenMP threads spin against each other between
calls: a float32 decode fell from 25 to 4 tok/s. One thread pool it is.

When the layers are compiled (backends/torch_compile.py), float32 weights stay
as they are: inductor turns a one-row product, written as a multiply-and-sum, into
its own vectorized loop fused with the operations around it. Measured side by
side on a 2-core Intel Xeon (Sapphire Rapids) VM on the benchmark model, that
loop beat oneDNN's packed float32 kernel (47 vs 66 ms per token), while for
bfloat16 the packed kernel, called from the compiled code as it is, beat the
loop (29 vs 39 ms per token); on the AMD VM above the loop won in both dtypes.
So float32 weights stay dense and bfloat16 ones stay packed. Prompt chunks of a
dense weight go to oneDNN, which is as fast with an unpacked weight at hundreds
of rows.

CPUs without native bfloat16 arithmetic (AVX2 only: AMD Zen 3, Intel before
Cooper Lake) cannot pack bfloat16 weights, and torch's emulated bfloat16 product
runs a 512-token prompt at 18 GFLOP/s where float32 reaches 125 (measured on a
2-core Zen 3). There bfloat16 weights stay as they are for one-row products and
are upcast to float32 for prompt chunks (`UpcastingBf16Weight`).

All of the above is what runs without our own streaming kernels (torch_cpu_kernels,
`StreamingCpuWeight`), which take every float32 and bfloat16 weight on x86-64 CPUs
with AVX2 when they can be built: about twice torch's decode speed on the Zen 3,
and faster than oneDNN's packed kernel on the Xeon too (torch_cpu_kernels has the figures).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mistralrs.backends import torch_cpu_kernels

_HAS_MKLDNN_LINEAR = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)
# oneDNN packs bfloat16 only on CPUs with native bfloat16 support (AVX-512 or
# AVX-NE-CONVERT); on AVX2-only CPUs (AMD Zen 3, older Intel) packing raises.
NATIVE_BF16 = _HAS_MKLDNN_LINEAR and torch.ops.mkldnn._is_mkldnn_bf16_supported()
# Rows from which, without native bfloat16, a float32 product of the upcast weight is
# faster than torch's bfloat16 one (measured on a 2-core Zen 3: 455 vs 429 us at 4 rows
# of a 1536x576 weight, 3.2 vs 1.6 ms at 32, 49 vs 7 ms for a 512-token prompt).
UPCAST_FROM_ROWS = 4
# The dtype of prompt-chunk products of weights that are dequantized for the call.
PROMPT_DTYPE = torch.bfloat16 if NATIVE_BF16 else torch.float32
# Rows from which a prompt chunk leaves the streaming kernels (which re-read a block of
# weights from cache per row) for a dense matmul of the unpacked weight; measured on the
# 1536x576 weight of the benchmark model, 2-core Zen 3: they cross near 12 rows.
STREAM_UNTIL_ROWS = 16


def prepare(weight: torch.Tensor, compiled: bool):
    """Our streaming kernels' layout where they run; else prepacked for oneDNN, but dense float32
    for compiled layers; bfloat16 without native support upcast per prompt chunk; as it is when
    oneDNN cannot take it."""
    # Measured on the Zen 3 VM, float32 decode of the benchmark model, compiled: 23.2 tok/s
    # with our kernel against 19.6 with inductor's loop.
    if torch_cpu_kernels.dense_fits(weight) and torch_cpu_kernels.available():
        return StreamingCpuWeight(weight)
    if weight.dtype == torch.bfloat16 and not NATIVE_BF16:
        return UpcastingBf16Weight(weight)
    if weight.dtype not in (torch.float32, torch.bfloat16) or not _HAS_MKLDNN_LINEAR:
        return weight
    if compiled and weight.dtype == torch.float32:
        return DenseCpuWeight(weight)
    return PackedCpuWeight(weight)


class PackedCpuWeight:
    """A float32 or bfloat16 weight prepacked for oneDNN's matmul."""

    def __init__(self, weight: torch.Tensor):
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 1)

    def __call__(self, x, bias):
        rows = x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)


class DenseCpuWeight:
    """A float32 weight left as it is, for compiled layers (see the module docstring)."""

    def __init__(self, weight: torch.Tensor):
        self.out_features, self.in_features = weight.shape
        self.weight = weight.contiguous()

    def __call__(self, x, bias):
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] == 1 and torch.compiler.is_compiling():
            # One row: a multiply-and-sum in float32 that inductor compiles into a streaming loop.
            y = (rows.float() * self.weight.float()).sum(-1)
            if bias is not None:
                y = y + bias.float()
            y = y.to(x.dtype)
        else:
            y = torch.ops.mkldnn._linear_pointwise(rows, self.weight, bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)


class UpcastingBf16Weight:
    """A bfloat16 weight on a CPU without native bfloat16 arithmetic.

    One row (decode) reads the bfloat16 weight, half the bytes of float32; prompt
    chunks multiply in float32, where torch's emulated bfloat16 product is ~7x slower.
    """

    def __init__(self, weight: torch.Tensor):
        self.out_features, self.in_features = weight.shape
        # An owned copy, as packed weights are, rather than pages of the mapped checkpoint.
        self.weight = weight.contiguous().clone()

    def __call__(self, x, bias):
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] < UPCAST_FROM_ROWS:
            y = F.linear(rows.to(torch.bfloat16), self.weight).to(x.dtype)
        else:
            y = F.linear(rows.float(), self.weight.float()).to(x.dtype)
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], self.out_features)


class StreamingCpuWeight:
    """A float32 or bfloat16 weight in the layout of our streaming decode kernels.

    Few rows (decode) go to `torch_cpu_kernels.matvec_dense`, which returns the input's
    dtype. Prompt chunks unpack the weight for one dense matmul, in float32 unless the CPU
    has native bfloat16; the unpacking is one pass over the weight, next to a product of
    at least 16 rows by it.
    """

    def __init__(self, weight: torch.Tensor):
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        self.packed = torch_cpu_kernels.repack_dense(weight.contiguous())

    def __call__(self, x, bias):
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] < STREAM_UNTIL_ROWS:
            if rows.dtype not in (torch.float32, torch.bfloat16):
                rows = rows.float()
            y = torch_cpu_kernels.matvec_dense(rows.contiguous(), self.packed).to(x.dtype)
        else:
            dtype = torch.float32 if self.dtype == torch.float32 or not NATIVE_BF16 else torch.bfloat16
            y = F.linear(rows.to(dtype), torch_cpu_kernels.unpack_dense(self.packed, dtype)).to(x.dtype)
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def dense(self) -> torch.Tensor:
        return torch_cpu_kernels.unpack_dense(self.packed, self.dtype)
