"""Triton kernels for affine-quantized weights: w = scale * q + bias per group of columns.

Layout (built by torch_cuda_quant.CudaQuantWeight):
- values: uint8, (out, in / 2) with two values a byte for at most 4 bits (column 2j in
  the low nibble, 2j + 1 in the high one), else (out, in), one value a byte;
- scales, biases: (out, in / GROUP), float16 or float32; GROUP a power of two >= 16.

`affine_matvec` is the decode product: each program reads a block of output rows'
packed values once per activation row and sums in float32, folding the scale and bias
in per group (sum(s * q * x + b * x) = s * sum(q * x) + b * sum(x)), so the weight is
read at its quantized size. `affine_dequantize` writes the weight out in the compute
dtype for prompt chunks, which are compute-bound and go to cuBLAS.

Importing this module needs Triton. With TRITON_INTERPRET=1 set before the import,
Triton runs these kernels on CPU tensors, which is how the tests check them on
machines without a GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _affine_matvec(x_ptr, values_ptr, scales_ptr, biases_ptr, out_ptr, N, K, n_groups, stride_x, stride_out,
                   GROUP: tl.constexpr, PACKED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    GROUPS_PER_BLOCK: tl.constexpr = BLOCK_K // GROUP
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    x_row = x_ptr + tl.program_id(1) * stride_x
    row_ok = rows < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        groups = k0 // GROUP + tl.arange(0, GROUPS_PER_BLOCK)
        group_mask = row_ok[:, None] & (groups < n_groups)[None, :]
        scales = tl.load(scales_ptr + rows[:, None] * n_groups + groups[None, :], mask=group_mask, other=0.0)
        biases = tl.load(biases_ptr + rows[:, None] * n_groups + groups[None, :], mask=group_mask, other=0.0)
        if PACKED:
            pairs = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            pair_ok = pairs < K // 2
            b = tl.load(values_ptr + rows[:, None] * (K // 2) + pairs[None, :],
                        mask=row_ok[:, None] & pair_ok[None, :], other=0)
            x_even = tl.load(x_row + 2 * pairs, mask=pair_ok, other=0.0).to(tl.float32)
            x_odd = tl.load(x_row + 2 * pairs + 1, mask=pair_ok, other=0.0).to(tl.float32)
            qx = (b & 15).to(tl.float32) * x_even[None, :] + (b >> 4).to(tl.float32) * x_odd[None, :]
            qx_by_group = tl.sum(tl.reshape(qx, (BLOCK_N, GROUPS_PER_BLOCK, GROUP // 2)), axis=2)
            x_by_group = tl.sum(tl.reshape(x_even + x_odd, (GROUPS_PER_BLOCK, GROUP // 2)), axis=1)
        else:
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            q = tl.load(values_ptr + rows[:, None] * K + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                        other=0)
            x = tl.load(x_row + cols, mask=col_ok, other=0.0).to(tl.float32)
            qx_by_group = tl.sum(tl.reshape(q.to(tl.float32) * x[None, :], (BLOCK_N, GROUPS_PER_BLOCK, GROUP)), axis=2)
            x_by_group = tl.sum(tl.reshape(x, (GROUPS_PER_BLOCK, GROUP)), axis=1)
        acc += tl.sum(scales.to(tl.float32) * qx_by_group + biases.to(tl.float32) * x_by_group[None, :], axis=1)
    tl.store(out_ptr + tl.program_id(1) * stride_out + rows, acc.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _affine_dequantize(values_ptr, scales_ptr, biases_ptr, out_ptr, N, K, n_groups,
                       GROUP: tl.constexpr, PACKED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows < N)[:, None] & (cols < K)[None, :]
    if PACKED:
        b = tl.load(values_ptr + rows[:, None] * (K // 2) + (cols // 2)[None, :], mask=mask, other=0)
        q = tl.where((cols % 2 == 0)[None, :], b & 15, b >> 4)
    else:
        q = tl.load(values_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0)
    at = rows[:, None] * n_groups + (cols // GROUP)[None, :]
    scales = tl.load(scales_ptr + at, mask=mask, other=0.0).to(tl.float32)
    biases = tl.load(biases_ptr + at, mask=mask, other=0.0).to(tl.float32)
    w = q.to(tl.float32) * scales + biases
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)


def matvec_constants(group_size: int, packed: bool) -> dict:
    """The compile-time arguments `affine_matvec` gives its kernel."""
    return {"GROUP": group_size, "PACKED": packed, "BLOCK_N": MATVEC_BLOCK_N, "BLOCK_K": max(group_size, 256)}


def dequantize_constants(group_size: int, packed: bool) -> dict:
    """The compile-time arguments `affine_dequantize` gives its kernel."""
    return {"GROUP": group_size, "PACKED": packed, "BLOCK_N": DEQUANTIZE_BLOCK_N, "BLOCK_K": DEQUANTIZE_BLOCK_K}


def affine_matvec(x, values, scales, biases, out, group_size: int, packed: bool) -> None:
    """out (M, N) = x (M, K) times the weight; M is small (decode)."""
    m, k = x.shape
    n = out.shape[1]
    grid = (triton.cdiv(n, MATVEC_BLOCK_N), m)
    _affine_matvec[grid](x, values, scales, biases, out, n, k, scales.shape[1], x.stride(0), out.stride(0),
                         **matvec_constants(group_size, packed))


def affine_dequantize(values, scales, biases, out, group_size: int, packed: bool) -> None:
    """out (N, K) = the weight, in out's dtype."""
    n, k = out.shape
    grid = (triton.cdiv(n, DEQUANTIZE_BLOCK_N), triton.cdiv(k, DEQUANTIZE_BLOCK_K))
    _affine_dequantize[grid](values, scales, biases, out, n, k, scales.shape[1],
                             **dequantize_constants(group_size, packed))


# Block shapes. Untuned on a GPU (none has been lent yet); chosen from the compiled cubins'
# resource use (tests/triton_compile.py, sm_90): with these, every group size and layout
# compiles to at most 128 registers a thread and no spills, where 16 decode rows or 64 x 64
# dequantize tiles took 168 registers and spilled to the stack. Eight output rows a decode
# program also spreads a 576-row weight over 72 programs (an H100 has 132 multiprocessors).
MATVEC_BLOCK_N = 8
DEQUANTIZE_BLOCK_N = 16
DEQUANTIZE_BLOCK_K = 128
