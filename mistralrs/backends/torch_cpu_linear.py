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
"""

from __future__ import annotations

import torch

_HAS_MKLDNN_LINEAR = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)
_PACKABLE = (torch.float32, torch.bfloat16)


def prepare(weight: torch.Tensor, compiled: bool):
    """Prepacked for oneDNN, but dense float32 for compiled layers; as it is when oneDNN cannot take it."""
    if weight.dtype not in _PACKABLE or not _HAS_MKLDNN_LINEAR:
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
