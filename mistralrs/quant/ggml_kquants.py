"""The 256-element GGML "K-quant" super-block formats: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K.

A port of ggml-quants.c (`quantize_row_q*_K_ref`, `quantize_row_q*_K_impl`) vectorised over
blocks; the scale searches (`make_qkx2_quants`, `make_q3_quants`, `make_qx_quants`,
`make_qp_quants`) live in `ggml_kquant_search`, which keeps ggml's float32 operation order
(float32 addition is not associative, and the goal is the same bytes as ggml, not just the
same error).

Shapes: `x` is float32 (n_blocks, 256); packed blocks are uint8 (n_blocks, type_size).
The quantizers take any number of blocks: past CHUNK_BLOCKS they work through
slices of that size on a thread pool, so a caller gets the best speed by passing a whole
tensor's blocks at once (numpy's per-call overhead weighs heavily on small slices).
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .ggml_kquant_search import (
    GROUP_MAX_EPS,
    colsum,
    make_q3_quants,
    make_qkx2_quants,
    make_qp_quants,
    make_qx_quants,
    nearest_int,
    signed_absmax,
    to_columns,
)
from .ggml_legacy import f16_bytes, f16_value

F32 = np.float32
QK_K = 256

# Larger inputs are quantized in slices of this many blocks (a few MB of temporaries each;
# below ~500 blocks numpy's per-call overhead starts to show), on a small thread pool:
# numpy releases the GIL inside its loops, so slices run side by side.
CHUNK_BLOCKS = 512
MAX_THREADS = 8
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (threads, pool)
_pool_lock = threading.Lock()


def _threads() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores))


def _map(fn, starts):
    global _pool
    threads = _threads()
    if threads == 1 or len(starts) == 1:
        return [fn(i) for i in starts]
    with _pool_lock:
        if _pool is None or _pool[0] != threads:
            _pool = (threads, ThreadPoolExecutor(threads, thread_name_prefix="mistralrs-kquant"))
        pool = _pool[1]
    return list(pool.map(fn, starts))


def _in_chunks(quantize):
    """Run a block quantizer on CHUNK_BLOCKS-block slices of its input (blocks are independent).

    Float overflow and NaN in degenerate blocks are part of ggml's arithmetic (the bytes
    match it there too), so numpy's warnings about them are silenced, in every thread.
    """

    def quiet(x, qw):
        with np.errstate(all="ignore"):
            return quantize(x) if qw is None else quantize(x, qw)

    @functools.wraps(quantize)
    def run(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
        if len(x) <= CHUNK_BLOCKS:
            return quiet(x, qw)

        def one(i):
            return quiet(x[i : i + CHUNK_BLOCKS], None if qw is None else qw[i : i + CHUNK_BLOCKS])

        return np.concatenate(_map(one, range(0, len(x), CHUNK_BLOCKS)))

    return run


def _rows(lt: np.ndarray, shape) -> np.ndarray:
    """Column-layout codes (n, groups), float32, back to int32 in block layout `shape`."""
    return lt.T.astype(np.int32).reshape(shape)


# --- shared packing helpers -------------------------------------------------------------------


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """qs[32h + l] = L[128h + l] | L[128h+32+l] << 2 | ... << 4 | ... << 6 (Q2_K and Q3_K)."""
    L = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (L[:, :, 0] | L[:, :, 1] << 2 | L[:, :, 2] << 4 | L[:, :, 3] << 6).reshape(-1, 64)


def _unpack_2bit(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return (q & 3).reshape(-1, QK_K)


def _bits_by_32(L: np.ndarray, bit: int) -> np.ndarray:
    """mask[j] bit b = bit `bit` of L[32b + j] (Q3_K hmask, Q5_K qh)."""
    b = ((L.reshape(-1, 8, 32) >> bit) & 1).astype(np.uint8)
    return np.bitwise_or.reduce(b << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)


def _unbits_by_32(m: np.ndarray) -> np.ndarray:
    return ((m[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1).reshape(-1, QK_K)


def _pack_nibbles_64(L: np.ndarray) -> np.ndarray:
    """q[32c + l] = L[64c + l] | L[64c + 32 + l] << 4 (Q4_K and Q5_K low bits)."""
    L = (L.reshape(-1, 4, 2, 32) & 0xF).astype(np.uint8)
    return (L[:, :, 0] | L[:, :, 1] << 4).reshape(-1, 128)


def _unpack_nibbles_64(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(-1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (q & 0xF).reshape(-1, QK_K)


def _pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins into 12 bytes (ggml's layout for Q4_K/Q5_K)."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    out = np.empty((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, :4] | (ls[:, 4:] >> 4) << 6
    out[:, 4:8] = lm[:, :4] | (lm[:, 4:] >> 4) << 6
    out[:, 8:12] = (ls[:, 4:] & 0xF) | (lm[:, 4:] & 0xF) << 4
    return out


def _unpack_scale_min_k4(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sc = np.concatenate([b[:, 0:4] & 63, (b[:, 8:12] & 0xF) | (b[:, 0:4] >> 6) << 4], axis=-1)
    mn = np.concatenate([b[:, 4:8] & 63, (b[:, 8:12] >> 4) | (b[:, 4:8] >> 6) << 4], axis=-1)
    return sc, mn


def _pack_scales_q3(s: np.ndarray) -> np.ndarray:
    """Sixteen 6-bit values: low nibbles in bytes 0-7 (j and j+8), high 2 bits in bytes 8-11."""
    s = s.astype(np.uint8)
    out = np.empty((s.shape[0], 12), np.uint8)
    out[:, 0:8] = (s[:, :8] & 0xF) | (s[:, 8:] & 0xF) << 4
    hi = (s >> 4).reshape(-1, 4, 4)  # [j // 4, j % 4]
    out[:, 8:12] = hi[:, 0] | hi[:, 1] << 2 | hi[:, 2] << 4 | hi[:, 3] << 6
    return out


def _unpack_scales_q3(b: np.ndarray) -> np.ndarray:
    lo = np.concatenate([b[:, 0:8] & 0xF, b[:, 0:8] >> 4], axis=-1)
    hi = (b[:, None, 8:12] >> np.array([0, 2, 4, 6], np.uint8)[None, :, None]) & 3
    return lo | hi.reshape(-1, 16) << 4


def _fp16_round(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the 2 stored bytes, the float32 value ggml reads back from them)."""
    b = f16_bytes(v)
    return b, f16_value(b)[:, 0]


# --- quantizers -------------------------------------------------------------------------------


@_in_chunks
def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    xs = x.reshape(-1, 16, 16)
    xt = to_columns(x, 16)
    scales, mins, L = make_qkx2_quants(xt, np.abs(xt), 3, -0.5, 0.1, 15, True)
    scales, mins, L = scales.reshape(-1, 16), mins.reshape(-1, 16), _rows(L, xs.shape)
    max_scale = np.maximum(scales.max(axis=-1), F32(0))
    max_min = np.maximum(mins.max(axis=-1), F32(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = nearest_int((F32(15) / max_scale)[:, None] * scales)
        lm = nearest_int((F32(15) / max_min)[:, None] * mins)
    ls = np.where(max_scale[:, None] > 0, ls, 0)
    lm = np.where(max_min[:, None] > 0, lm, 0)
    sc = ((ls | lm << 4) & 0xFF).astype(np.uint8)
    db, d = _fp16_round(np.where(max_scale > 0, max_scale / F32(15), F32(0)))
    mb, dmin = _fp16_round(np.where(max_min > 0, max_min / F32(15), F32(0)))
    # Requantize against the rounded scales, except in sub-blocks whose scale rounded to 0.
    dl = d[:, None] * (sc & 0xF).astype(F32)
    ml = dmin[:, None] * (sc >> 4).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        l2 = np.clip(nearest_int((xs + ml[..., None]) / dl[..., None]), 0, 3)
    L = np.where(dl[..., None] != 0, l2, L)
    return np.concatenate([sc, _pack_2bit(L), db, mb], axis=-1)


@_in_chunks
def quantize_q3_k(x: np.ndarray) -> np.ndarray:
    xs = x.reshape(-1, 16, 16)
    scales, L = make_q3_quants(to_columns(x, 16), 4)
    scales, L = scales.reshape(-1, 16), _rows(L, xs.shape)
    max_scale = signed_absmax(scales, axis=-1)
    has = max_scale != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-32) / max_scale
        ls = nearest_int(iscale[:, None] * scales)
        ls = ((ls + 128) & 0xFF) - 128  # stored to an int8_t before the clamp
        db, d = _fp16_round(np.where(has, F32(1) / iscale, F32(0)))
    ls = np.where(has[:, None], np.clip(ls, -32, 31) + 32, 0)
    scale_bytes = _pack_scales_q3(ls)
    dl = d[:, None] * (ls - 32).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        l3 = np.clip(nearest_int(xs / dl[..., None]), -4, 3) + 4
    L = np.where(dl[..., None] != 0, l3, L).reshape(-1, QK_K)
    hmask = _bits_by_32(L, 2)
    return np.concatenate([hmask, _pack_2bit(L & 3), scale_bytes, db], axis=-1)


def _quantize_q45_k(x, nmax, rmin, nstep, qw=None):
    """Shared by Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins."""
    xs = x.reshape(-1, 8, 32)
    if qw is not None:
        return _quantize_q45_k_imatrix(xs, nmax, qw.reshape(-1, 8, 32))
    xt = to_columns(xs, 32)
    av_x = np.sqrt(colsum(xt * xt) / F32(32))
    scales, mins, L = make_qkx2_quants(xt, av_x + np.abs(xt), nmax, rmin, 0.1, nstep, False)
    scales, mins, L = scales.reshape(-1, 8), mins.reshape(-1, 8), _rows(L, xs.shape)
    max_scale = np.maximum(scales.max(axis=-1), F32(0))
    max_min = np.maximum(mins.max(axis=-1), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    # nearest_int -> uint8_t (wraps) -> MIN(63, .)
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63)
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63)
    db, d = _fp16_round(max_scale / F32(63))
    mb, dmin = _fp16_round(max_min / F32(63))
    return db, mb, _pack_scale_min_k4(ls, lm), _requantize(xs, d, dmin, ls, lm, nmax, L)


def _requantize(xs, d, dmin, ls, lm, nmax, L):
    """Recompute the codes against the rounded 6-bit scales and mins (ggml's second pass)."""
    dl = d[:, None] * ls.astype(F32)
    ml = dmin[:, None] * lm.astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        lq = np.clip(nearest_int((xs + ml[..., None]) / dl[..., None]), 0, nmax)
    return np.where(dl[..., None] != 0, lq, L).reshape(-1, QK_K)


def _quantize_q45_k_imatrix(xs, nmax, qw):
    """ggml's quantize_row_q{4,5}_K_impl: importance-weighted search, 6-bit scales fitted too."""
    nb = xs.shape[0]
    xt = to_columns(xs, 32)
    x2 = to_columns(xs, QK_K)
    sigma2 = F32(2) * colsum(x2 * x2) / F32(QK_K)
    wt = to_columns(qw, 32) * np.sqrt(np.repeat(sigma2, 8)[None, :] + xt * xt)
    scales, mins, L = make_qkx2_quants(xt, wt, nmax, -0.9, 0.05, 36, False)
    L = _rows(L, xs.shape)
    # The 6-bit scales and mins: one make_qp_quants each, run side by side as 2*nb columns.
    sw = colsum(wt).reshape(nb, 8).T
    sm = np.ascontiguousarray(np.concatenate([scales.reshape(nb, 8).T, mins.reshape(nb, 8).T], axis=1))
    dm, lsm = make_qp_quants(sm, 63, np.ascontiguousarray(np.concatenate([sw, sw], axis=1)))
    d_block, m_block = dm[:nb], dm[nb:]
    ls, lm = lsm[:, :nb].T.astype(np.int32), lsm[:, nb:].T.astype(np.int32)
    db, d = _fp16_round(d_block)
    mb, dmin = _fp16_round(m_block)
    ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
    return db, mb, _pack_scale_min_k4(ls, lm), _requantize(xs, d, dmin, ls, lm, nmax, L)


@_in_chunks
def quantize_q4_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    db, mb, scale_bytes, L = _quantize_q45_k(x, 15, -1.0, 20, qw)
    return np.concatenate([db, mb, scale_bytes, _pack_nibbles_64(L)], axis=-1)


@_in_chunks
def quantize_q5_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    db, mb, scale_bytes, L = _quantize_q45_k(x, 31, -0.5, 15, qw)
    return np.concatenate([db, mb, scale_bytes, _bits_by_32(L, 4), _pack_nibbles_64(L)], axis=-1)


@_in_chunks
def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    xs = x.reshape(-1, 16, 16)
    scales, L = make_qx_quants(to_columns(x, 16), 32)
    scales, L = scales.reshape(-1, 16), _rows(L, xs.shape)
    max_scale = signed_absmax(scales, axis=-1)
    empty = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-128) / max_scale
        db, d = _fp16_round(F32(1) / iscale)
        sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
        dl = d[:, None] * sc.astype(F32)
        l6 = np.clip(nearest_int(xs / dl[..., None]), -32, 31) + 32
    L = np.where(dl[..., None] != 0, l6, L).reshape(-1, 2, 4, 32).astype(np.uint8)
    # Per half h: ql[64h + l] = L[l] | L[l+64] << 4, ql[64h + 32 + l] = L[l+32] | L[l+96] << 4.
    ql = np.concatenate(
        [(L[:, :, 0] & 0xF) | (L[:, :, 2] & 0xF) << 4, (L[:, :, 1] & 0xF) | (L[:, :, 3] & 0xF) << 4], axis=-1
    ).reshape(-1, 128)
    h = L >> 4
    qh = (h[:, :, 0] | h[:, :, 1] << 2 | h[:, :, 2] << 4 | h[:, :, 3] << 6).reshape(-1, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), db], axis=-1)
    out[empty] = 0  # ggml memsets a block whose every sub-block is zero
    return out


@_in_chunks
def quantize_q8_k(x: np.ndarray) -> np.ndarray:
    mx = signed_absmax(x, axis=-1)
    has = mx != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-127) / mx
        q = np.minimum(nearest_int(iscale[:, None] * x), 127)
        d = np.where(has, F32(1) / iscale, F32(0)).astype(F32)
    q = np.where(has[:, None], q, 0).astype(np.int8)
    bsums = q.reshape(-1, 16, 16).astype(np.int16).sum(axis=-1, dtype=np.int16)
    return np.concatenate([d.reshape(-1, 1).view(np.uint8), q.view(np.uint8), bsums.view(np.uint8)], axis=-1)


# --- dequantizers (same float operation order as ggml's dequantize_row_*) ---------------------


def _q2_k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q2_K's (d * scale, dmin * min) per 16-element sub-block."""
    sc = b[:, 0:16]
    d, dmin = f16_value(b[:, 80:82]), f16_value(b[:, 82:84])
    return d * (sc & 0xF).astype(F32), dmin * (sc >> 4).astype(F32)


def _q3_k_scales(b: np.ndarray) -> np.ndarray:
    """Q3_K's d * scale per 16-element sub-block."""
    return f16_value(b[:, 108:110]) * (_unpack_scales_q3(b[:, 96:108]).astype(np.int8) - np.int8(32)).astype(F32)


def _q3_k_values(b: np.ndarray) -> np.ndarray:
    """Q3_K's values shifted up by 4 to be unsigned (0..7): the low two bits and the high bit."""
    return _unpack_2bit(b[:, 32:96]) | _unbits_by_32(b[:, 0:32]) << 2


def dequantize_q2_k(b: np.ndarray) -> np.ndarray:
    dl, ml = _q2_k_scales(b)
    q = _unpack_2bit(b[:, 16:80]).reshape(-1, 16, 16).astype(F32)
    return (dl[..., None] * q - ml[..., None]).reshape(-1, QK_K)


def dequantize_q3_k(b: np.ndarray) -> np.ndarray:
    q = _q3_k_values(b).astype(np.int8) - np.int8(4)
    return (_q3_k_scales(b)[..., None] * q.reshape(-1, 16, 16).astype(F32)).reshape(-1, QK_K)


def _dequantize_q45_k(b, q):
    d, dmin = f16_value(b[:, 0:2]), f16_value(b[:, 2:4])
    sc, mn = _unpack_scale_min_k4(b[:, 4:16])
    dl = (d * sc.astype(F32))[..., None]
    ml = (dmin * mn.astype(F32))[..., None]
    return (dl * q.reshape(-1, 8, 32).astype(F32) - ml).reshape(-1, QK_K)


def dequantize_q4_k(b: np.ndarray) -> np.ndarray:
    return _dequantize_q45_k(b, _unpack_nibbles_64(b[:, 16:144]))


def dequantize_q5_k(b: np.ndarray) -> np.ndarray:
    return _dequantize_q45_k(b, _unpack_nibbles_64(b[:, 48:176]) | _unbits_by_32(b[:, 16:48]) << 4)


def _q6_k_values(b: np.ndarray) -> np.ndarray:
    """Q6_K's values shifted up by 32 to be unsigned (0..63)."""
    ql = b[:, 0:128].reshape(-1, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    qh = b[:, 128:192].reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return (ql & 0xF).reshape(-1, QK_K) | (qh & 3).reshape(-1, QK_K) << 4


def _q6_k_scales(b: np.ndarray) -> np.ndarray:
    """Q6_K's d * scale per 16-element sub-block."""
    return f16_value(b[:, 208:210]) * np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(F32)


def dequantize_q6_k(b: np.ndarray) -> np.ndarray:
    q = _q6_k_values(b).astype(np.int8) - np.int8(32)
    return (_q6_k_scales(b)[..., None] * q.reshape(-1, 16, 16).astype(F32)).reshape(-1, QK_K)


def dequantize_q8_k(b: np.ndarray) -> np.ndarray:
    d = np.ascontiguousarray(b[:, 0:4]).view(F32)
    return np.ascontiguousarray(b[:, 4:260]).view(np.int8).astype(F32) * d


# Formats whose quantizer takes per-weight importance (`qw`, shaped like `x`).
IMATRIX = ("Q4_K", "Q5_K")

QUANTIZE = {
    "Q2_K": quantize_q2_k,
    "Q3_K": quantize_q3_k,
    "Q4_K": quantize_q4_k,
    "Q5_K": quantize_q5_k,
    "Q6_K": quantize_q6_k,
    "Q8_K": quantize_q8_k,
}
DEQUANTIZE = {
    "Q2_K": dequantize_q2_k,
    "Q3_K": dequantize_q3_k,
    "Q4_K": dequantize_q4_k,
    "Q5_K": dequantize_q5_k,
    "Q6_K": dequantize_q6_k,
    "Q8_K": dequantize_q8_k,
}
