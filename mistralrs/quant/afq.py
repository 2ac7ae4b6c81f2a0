"""AFQ (MLX affine quantization) in numpy, bit-exact with `mlx.core.quantize` on the CPU.

    quantize(w, bits=4, group_size=64)   float (rows, cols) -> AfqTensor
    dequantize(t)                        AfqTensor -> float32 (rows, cols)

Each group of `group_size` consecutive elements of a row is stored as `bits`-wide codes
q in [0, 2**bits - 1] with one scale and one bias: w ~= bias + q * scale.

The algorithm is MLX's CPU `affine_quantize` step for step, in float32:

    n_bins = 2**bits - 1
    scale  = max((w_max - w_min) / n_bins, 1e-7)
    edge   = w_min if |w_min| > |w_max| else w_max      (the extreme of larger magnitude)
    scale  = scale if edge is w_min else -scale          (edge always maps to a code >= 0)
    q0     = rint(edge / scale)
    if q0 != 0: scale = edge / q0; bias = edge           (the edge rule)
    else:       bias = 0
    q      = clip(rint((w - bias) / scale), 0, n_bins)

The edge rule makes the extreme of larger magnitude exact (it is the bias itself, code 0)
and, because the bias is then a whole number of scales away from zero, 0.0 is exactly
representable whenever it lies inside the group's range.

Input dtype. MLX reads every element as float32 and computes in float32 whatever the
input dtype; only the stored scales and biases are rounded to the input dtype at the end.
So for bfloat16 or float16 weights, pass the values as float32 (exact upcast) with
`dtype="bfloat16"` / `"float16"`: the codes are then bit-exact with MLX's for that input,
and the scales/biases are MLX's rounded ones (round-to-nearest-even), held as float32
values that are exactly representable in that dtype. (MLX's Metal kernel is a separate
implementation; only the CPU result is what we test against.) `dequantize(t, dtype)`
likewise reproduces MLX's dequantization in that dtype bit for bit.
"""

from __future__ import annotations

import numpy as np

from mistralrs.errors import UserError

from .qtensor import AfqTensor, pack_bits, unpack_bits

BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
GROUP_SIZES: tuple[int, ...] = (32, 64, 128)
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")

_EPS = np.float32(1e-7)


def check_params(bits: int, group_size: int, cols: int | None = None) -> None:
    if bits not in BITS:
        raise UserError(f"AFQ supports {', '.join(map(str, BITS))} bits, not {bits}.")
    if group_size not in GROUP_SIZES:
        raise UserError(f"AFQ group size must be one of {', '.join(map(str, GROUP_SIZES))}, not {group_size}.")
    if cols is not None and (cols <= 0 or cols % group_size):
        raise UserError(
            f"A row of {cols} elements cannot be stored as AFQ with group size {group_size}: rows must be "
            f"a positive multiple of {group_size} elements. Pick a smaller group size, another format, "
            f"or leave this tensor unquantized."
        )


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> float32 holding the nearest bfloat16 (ties to even; NaN stays NaN)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) & np.uint32(0xFFFF0000)
    out = rounded.view(np.float32)
    return np.where(np.isnan(x), np.float32(np.nan), out).astype(np.float32)


def round_to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded to `dtype` ("float32", "bfloat16", "float16"), returned as float32."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return x
    if dtype == "bfloat16":
        return round_to_bfloat16(x)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    raise UserError(f"Unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}.")


def quantize(w: np.ndarray, bits: int = 4, group_size: int = 64, dtype: str = "float32") -> AfqTensor:
    """float (rows, cols) -> AfqTensor, bit-exact with MLX's CPU `mx.quantize` (see module doc).

    `dtype` is the weight's own dtype: the scales and biases are rounded to it at the end,
    as MLX stores them in the input dtype."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise UserError(f"AFQ quantizes 2-D matrices; got shape {tuple(w.shape)}.")
    rows, cols = w.shape
    check_params(bits, group_size, cols)
    if dtype not in DTYPES:
        raise UserError(f"Unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}.")
    groups = np.ascontiguousarray(w, dtype=np.float32).reshape(rows, cols // group_size, group_size)
    if not np.isfinite(groups).all():
        raise UserError("Cannot AFQ-quantize a matrix holding NaN or infinite values.")
    n_bins = np.float32((1 << bits) - 1)
    w_max = groups.max(axis=-1)
    w_min = groups.min(axis=-1)
    mask = np.abs(w_min) > np.abs(w_max)
    scale = np.maximum((w_max - w_min) / n_bins, _EPS)
    scale = np.where(mask, scale, -scale)
    edge = np.where(mask, w_min, w_max)
    q0 = np.rint(edge / scale)
    nonzero = q0 != 0
    safe_q0 = np.where(nonzero, q0, np.float32(1))
    scale = np.where(nonzero, edge / safe_q0, scale).astype(np.float32)
    bias = np.where(nonzero, edge, np.float32(0)).astype(np.float32)
    q = np.rint((groups - bias[..., None]) / scale[..., None])
    q = np.clip(q, np.float32(0), n_bins).astype(np.uint8).reshape(rows, cols)
    return AfqTensor(bits, group_size, (rows, cols), pack_bits(q, bits),
                     round_to_dtype(scale, dtype), round_to_dtype(bias, dtype))


def codes(t: AfqTensor) -> np.ndarray:
    """The unpacked codes, uint8 (rows, cols)."""
    return unpack_bits(t.weight, t.bits, t.shape[1])


def dequantize(t: AfqTensor, dtype: str = "float32") -> np.ndarray:
    """float32 (rows, cols): bias + q * scale per group, as MLX's `mx.dequantize` computes it
    in `dtype`: in float32 directly; in bfloat16/float16 with the product and then the sum
    rounded to that dtype (the values are returned as float32, exactly representable)."""
    if dtype == "float32":
        return t.dequantize()
    if dtype not in DTYPES:
        raise UserError(f"Unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}.")
    rows, cols = t.shape
    q = codes(t).astype(np.float32).reshape(rows, cols // t.group_size, t.group_size)
    product = round_to_dtype(q * t.scales[..., None], dtype)
    return round_to_dtype(product + t.biases[..., None], dtype).reshape(rows, cols)
