"""Bits per weight a quantized tensor occupies once loaded, in the backend kernel's layout.

A GGML or AFQ format's own bits per weight are what the checkpoint or GGUF file stores;
in-situ quantization hands the blocks to a backend, which re-lays them for its kernels:

- torch on the CPU (backends/torch_quant.py): an affine format of at most 4 bits in groups
  of 32/64/128/256 (Q4_0, Q4_1, Q4_K, AFQ2-4) runs as int4 with a bfloat16 scale and zero
  per group; every other format runs as int8 with one bfloat16 scale per output row. An
  embedding table is always int8 rows (torch_ops.prepare_quantized_embedding). Where our
  streaming kernels run (backends/torch_cpu_kernels.py, x86-64 CPUs with AVX2),
  the 5- to 8-bit formats take 8 bits plus a float16 scale and bias per group, 9 bits for
  groups of 32, where this counts the 10 of two int4 matrices: a 10 % overestimate, kept so
  that the arithmetic needs no knowledge of the CPU.
- torch on CUDA (backends/torch_cuda_quant.py): every format keeps its exact affine form,
  values of at most 4 bits two to a byte and wider ones a byte each, with a float16 scale
  and bias per group (32 wide, 16 for Q2_K, Q3_K and Q6_K, AFQ's own). Without Triton the
  weight is dequantized to the compute dtype instead; this counts the Triton layout.
- MLX (backends/mlx_quant.py): a format with an exact affine view keeps its bits plus a
  scale and a bias per group in the compute dtype (groups of 32 for GGML formats, 64 for
  AFQ); Q2_K and Q3_K are requantized to 6 bits and Q6_K to 8 bits, in groups of 32.
  Embedding tables take the same layout.

Pure arithmetic: no torch or MLX import, so `mistralrs tune` can use it on any machine.
"""

from __future__ import annotations

from mistralrs.quant.ggml_affine import AFFINE_BITS as GGML_AFFINE
from mistralrs.quant.ggml_affine import GROUP as GGML_GROUP
from mistralrs.quant.ggml_affine import SIXTEEN_WIDE_BITS
from mistralrs.quant.isq import AFQ_GROUP_SIZE as AFQ_GROUP

# The kernels' layout choices live here, backend-free, and backends/*_quant.py import them,
# so `tune` counts exactly what the kernels hold without importing torch or MLX.
# Bits MLX requantizes the 16-wide formats to, in groups of 32: two 16-wide sub-blocks in one
# group have twice their own levels, so a few more bits keep the values within a small error.
MLX_REQUANTIZED_BITS = {"Q2_K": 6, "Q3_K": 6, "Q6_K": 8}
MLX_REQUANTIZED_GROUP = 32
TORCH_INT4_GROUP_SIZES = (32, 64, 128, 256)  # the group sizes _weight_int4pack_mm_for_cpu takes
TORCH_SCALE_BITS = 16  # torch_quant.COMPUTE is bfloat16
CUDA_SCALE_BITS = 16  # torch_cuda_quant keeps float16 scales and biases
DTYPE_BITS = {"f32": 32, "bf16": 16, "f16": 16, "float32": 32, "bfloat16": 16, "float16": 16}


def affine_view(label: str) -> tuple[int, int] | None:
    """(bits, group size) of `label`'s exact affine form; None for the 16-wide K-quants."""
    label = label.upper()
    if label.startswith("AFQ"):
        return int(label[3:]), AFQ_GROUP
    if label in GGML_AFFINE:
        return GGML_AFFINE[label], GGML_GROUP
    if label in MLX_REQUANTIZED_BITS:
        return None
    raise ValueError(f"unknown quantized format {label!r}")


def mlx_bits(label: str) -> int:
    """The bits per value MLX keeps `label` at (its own, or what it is requantized to)."""
    view = affine_view(label)
    return MLX_REQUANTIZED_BITS[label.upper()] if view is None else view[0]


def resident_bits(label: str, backend: str, device: str, in_features: int, compute_dtype: str,
                  *, embedding: bool = False) -> float:
    """Bits per weight of a (out, in_features) weight quantized as `label` ("Q4_K", "AFQ4"), as loaded.

    `backend` is "torch" or "mlx", `device` "cpu", "cuda" or "metal"; `compute_dtype` is the
    dtype the model runs at ("bf16", "f16", "f32" or the torch names). `embedding`: the tensor
    is an embedding table (or a tied head sharing it).
    """
    compute_bits = DTYPE_BITS[compute_dtype]
    view = affine_view(label)
    if backend == "mlx":
        if view is None:
            bits, group = MLX_REQUANTIZED_BITS[label.upper()], MLX_REQUANTIZED_GROUP
        else:
            bits, group = view
        return bits + 2 * compute_bits / group
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r}")
    if device == "cuda" and not embedding:  # embedding tables are dequantized on CUDA
        bits, group = view if view is not None else (SIXTEEN_WIDE_BITS[label.upper()], 16)
        return (4 if bits <= 4 else 8) + 2 * CUDA_SCALE_BITS / group
    if device != "cpu":
        return compute_bits  # dequantized at load
    int8_rows = 8 + TORCH_SCALE_BITS / in_features
    if embedding:
        return int8_rows
    if view is not None and view[1] in TORCH_INT4_GROUP_SIZES:
        int4 = 4 + 2 * TORCH_SCALE_BITS / view[1]  # values, then a bf16 scale and zero per group
        return int4 if view[0] <= 4 else 2 * int4  # 5- to 8-bit formats run as two int4 matrices
    return int8_rows


def quantized_compute_dtype(checkpoint_dtype: str, backend: str, device: str) -> str:
    """The dtype a model loaded with ISQ runs at: on torch's CPU, float32 activations around
    the integer kernels, whatever the checkpoint's dtype (engine.loading.load_folder)."""
    if backend == "torch" and device == "cpu":
        return "float32" if checkpoint_dtype in ("float32", "bfloat16", "float16") else "f32"
    return checkpoint_dtype
