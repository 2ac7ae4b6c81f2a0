"""The 32-element GGML block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1.

Each function works on a whole batch of blocks at once: `x` is float32 (n_blocks, 32) and
the packed form is uint8 (n_blocks, type_size). The arithmetic follows ggml-quants.c
(`quantize_row_*_ref`, `dequantize_row_*`) operation by operation, in float32, so the
bytes and floats are bit-exact with ggml (and with gguf-py, which does the same).
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def f16_bytes(v: np.ndarray) -> np.ndarray:
    """float32 (n,) -> its IEEE half as 2 little-endian bytes (n, 2); round to nearest even like ggml."""
    return v.astype(np.float16).reshape(-1, 1).view(np.uint8)


def f16_value(b: np.ndarray) -> np.ndarray:
    """2 bytes per row (n, 2) -> float32 (n, 1), ready to broadcast over a block."""
    return np.ascontiguousarray(b).view(np.float16).astype(F32)


def roundf(v: np.ndarray) -> np.ndarray:
    """C roundf (half away from zero) without the x+0.5 error for 0.49999997."""
    a = np.abs(v)
    fl = np.floor(a)
    return np.copysign(fl + np.floor(2 * (a - fl)), v)


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """The value with the largest magnitude, the first one on ties (ggml's `amax < fabsf(v)` loop)."""
    i = np.abs(x).argmax(axis=-1)[:, None]
    return np.take_along_axis(x, i, axis=-1)


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, F32(0), F32(1) / d).astype(F32)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """Byte j holds element j (low nibble) and element j+16 (high nibble)."""
    return ((q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)).astype(np.uint8)


def _unnibble(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0xF, qs >> 4], axis=-1)


def _high_bits(q: np.ndarray) -> np.ndarray:
    """Bit 4 of each of the 32 values, as one little-endian uint32 (4 bytes)."""
    return np.packbits((q >> 4) & 1, axis=-1, bitorder="little").astype(np.uint8)


def _unhigh(qh: np.ndarray) -> np.ndarray:
    return np.unpackbits(qh, axis=-1, bitorder="little")


# --- quantizers -------------------------------------------------------------------------------


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    d = _signed_absmax(x) / F32(-8)
    # (int8_t)(v + 8.5f) truncates toward zero; MIN(15, .) catches the +8 edge.
    q = np.minimum(np.trunc(x * _inverse(d) + F32(8.5)), 15).astype(np.int32)
    return np.concatenate([f16_bytes(d), _nibbles(q)], axis=-1)


def quantize_q4_1(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    d = (hi - lo) / F32(15)
    q = np.minimum(np.trunc((x - lo) * _inverse(d) + F32(0.5)), 15).astype(np.int32)
    return np.concatenate([f16_bytes(d), f16_bytes(lo), _nibbles(q)], axis=-1)


def quantize_q5_0(x: np.ndarray) -> np.ndarray:
    d = _signed_absmax(x) / F32(-16)
    q = np.minimum(np.trunc(x * _inverse(d) + F32(16.5)), 31).astype(np.int32)
    return np.concatenate([f16_bytes(d), _high_bits(q), _nibbles(q)], axis=-1)


def quantize_q5_1(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    d = (hi - lo) / F32(31)
    # ggml has no MIN(31, .) here; the value cannot exceed 31.5, so truncation is enough.
    q = np.trunc((x - lo) * _inverse(d) + F32(0.5)).astype(np.int32)
    return np.concatenate([f16_bytes(d), f16_bytes(lo), _high_bits(q), _nibbles(q)], axis=-1)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(axis=-1, keepdims=True) / F32(127)
    q = roundf(x * _inverse(d)).astype(np.int8)
    return np.concatenate([f16_bytes(d), q.view(np.uint8)], axis=-1)


def quantize_q8_1(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(axis=-1, keepdims=True) / F32(127)
    q = roundf(x * _inverse(d)).astype(np.int8)
    # s = d * sum(q): the integer sum is exact, then one float multiply as in ggml.
    s = q.astype(np.int32).sum(axis=-1, keepdims=True).astype(F32) * d
    return np.concatenate([f16_bytes(d), f16_bytes(s), q.view(np.uint8)], axis=-1)


# --- dequantizers -----------------------------------------------------------------------------


def dequantize_q4_0(b: np.ndarray) -> np.ndarray:
    q = _unnibble(b[:, 2:18]).astype(np.int8) - np.int8(8)
    return q.astype(F32) * f16_value(b[:, 0:2])


def dequantize_q4_1(b: np.ndarray) -> np.ndarray:
    q = _unnibble(b[:, 4:20]).astype(F32)
    return q * f16_value(b[:, 0:2]) + f16_value(b[:, 2:4])


def dequantize_q5_0(b: np.ndarray) -> np.ndarray:
    q = (_unnibble(b[:, 6:22]) | (_unhigh(b[:, 2:6]) << 4)).astype(np.int8) - np.int8(16)
    return q.astype(F32) * f16_value(b[:, 0:2])


def dequantize_q5_1(b: np.ndarray) -> np.ndarray:
    q = (_unnibble(b[:, 8:24]) | (_unhigh(b[:, 4:8]) << 4)).astype(F32)
    return q * f16_value(b[:, 0:2]) + f16_value(b[:, 2:4])


def dequantize_q8_0(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(F32) * f16_value(b[:, 0:2])


def dequantize_q8_1(b: np.ndarray) -> np.ndarray:
    # The stored sum `s` only speeds up dot products; the values are d * q.
    return np.ascontiguousarray(b[:, 4:]).view(np.int8).astype(F32) * f16_value(b[:, 0:2])


QUANTIZE = {
    "Q4_0": quantize_q4_0,
    "Q4_1": quantize_q4_1,
    "Q5_0": quantize_q5_0,
    "Q5_1": quantize_q5_1,
    "Q8_0": quantize_q8_0,
    "Q8_1": quantize_q8_1,
}
DEQUANTIZE = {
    "Q4_0": dequantize_q4_0,
    "Q4_1": dequantize_q4_1,
    "Q5_0": dequantize_q5_0,
    "Q5_1": dequantize_q5_1,
    "Q8_0": dequantize_q8_0,
    "Q8_1": dequantize_q8_1,
}
