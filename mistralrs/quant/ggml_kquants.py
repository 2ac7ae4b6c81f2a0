"""The 256-element GGML "K-quant" super-block formats: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K.

A port of ggml-quants.c (`quantize_row_q*_K_ref` and the scale searches `make_qkx2_quants`,
`make_q3_quants`, `make_qx_quants`) vectorised over blocks: every loop over *blocks* became
array arithmetic, while the loops over *elements of one block* that ggml runs in a fixed
order stay loops (or sequential cumulative sums), because float32 addition is not
associative and the goal is the same bytes as ggml, not just the same error.

Shapes: `x` is float32 (n_blocks, 256); packed blocks are uint8 (n_blocks, type_size).
"""

from __future__ import annotations

import numpy as np

from .ggml_legacy import f16_bytes, f16_value

F32 = np.float32
QK_K = 256
GROUP_MAX_EPS = F32(1e-15)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int, bit for bit: add 1.5*2^23 in float32 and read the mantissa.

    Round half to even for |v| < 2^22; larger values give the same garbage as in C, which
    the callers then clamp, so even degenerate blocks match ggml.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        bits = (np.asarray(v, F32) + F32(12582912.0)).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def seq_sum(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis left to right in float32, as a C `for` loop does."""
    return np.cumsum(a, axis=-1, dtype=F32)[..., -1]


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """The element with the largest |x| (the first on ties), as ggml's `if (ax > amax)` loop."""
    return np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)[..., 0]


# --- scale searches ---------------------------------------------------------------------------


def make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad):
    """Affine (scale, min) search per group on the last axis; returns (scale, -min, L uint8)."""
    err = np.abs if use_mad else np.square
    mn = np.minimum(x.min(axis=-1), F32(0))
    mx = x.max(axis=-1)
    sum_w = seq_sum(weights)
    sum_x = seq_sum(weights * x)
    flat = mx == mn
    with np.errstate(all="ignore"):
        iscale = F32(nmax) / (mx - mn)
        scale = F32(1) / iscale
        L = np.clip(nearest_int(iscale[..., None] * (x - mn[..., None])), 0, nmax).astype(F32)
        best = seq_sum(weights * err(scale[..., None] * L + mn[..., None] - x))
        for step in range(nstep + 1):
            # ggml re-reads `min` each step, so an accepted step moves the grid of the next one.
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (mx - mn)
            la = np.clip(nearest_int(iscale[..., None] * (x - mn[..., None])), 0, nmax).astype(F32)
            wl = weights * la
            sum_l, sum_l2, sum_xl = seq_sum(wl), seq_sum(wl * la), seq_sum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F32(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            cur = seq_sum(weights * err(this_scale[..., None] * la + this_min[..., None] - x))
            better = (D > 0) & (cur < best) & ~flat
            L = np.where(better[..., None], la, L)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    L = np.where(flat[..., None], F32(0), L)
    return np.where(flat, F32(0), scale), -mn, L.astype(np.uint8)


def make_qx_quants(x, nmax, qw=None):
    """Symmetric scale search (ggml rmse_type 1: weights x^2, or `qw`); returns (scale, L int32)."""
    mx = _signed_absmax(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    w = x * x if qw is None else qw
    wx = w * x
    with np.errstate(all="ignore"):

        def trial(iscale):
            q = np.clip(nearest_int(iscale[..., None] * x), -nmax, nmax - 1).astype(F32)
            return q, seq_sum(wx * q), seq_sum(w * q * q)

        q, sumlx, suml2 = trial(F32(-nmax) / mx)
        L = q + nmax
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            q, sumlx, suml2 = trial(-(F32(nmax) + F32(0.1) * F32(step)) / mx)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better[..., None], q + nmax, L)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
    return np.where(zero, F32(0), scale), np.where(zero[..., None], 0, L).astype(np.int32)


def make_q3_quants(x, nmax):
    """Q3_K's symmetric search with coordinate descent (do_rmse=true); returns (scale, L int32)."""
    mx = _signed_absmax(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    w = x * x
    wx = w * x
    with np.errstate(all="ignore"):
        L = np.clip(nearest_int((F32(-nmax) / mx)[..., None] * x), -nmax, nmax - 1).astype(F32)
        sumlx, suml2 = seq_sum(wx * L), seq_sum(w * L * L)
        # Up to 5 passes, each element in order, as in ggml; a pass that changes nothing
        # leaves the state as it was, so running it again for such a group is harmless.
        for _ in range(5):
            changed = False
            for i in range(x.shape[-1]):
                wi, xi, li = w[..., i], x[..., i], L[..., i]
                slx = sumlx - wx[..., i] * li
                sl2 = suml2 - wi * li * li
                new_l = np.clip(nearest_int(xi * sl2 / slx), -nmax, nmax - 1).astype(F32)
                slx2 = slx + wx[..., i] * new_l
                sl22 = sl2 + wi * new_l * new_l
                upd = (slx > 0) & (new_l != li) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
                if upd.any():
                    changed = True
                    L[..., i] = np.where(upd, new_l, li)
                    sumlx = np.where(upd, slx2, sumlx)
                    suml2 = np.where(upd, sl22, suml2)
            if not changed:
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return np.where(zero, F32(0), scale), np.where(zero[..., None], 0, L + nmax).astype(np.int32)


def make_qp_quants(x, nmax, qw):
    """Non-negative scale search for the 6-bit sub-block scales (imatrix path); returns (scale, L)."""
    mx = np.maximum(x.max(axis=-1), F32(0))
    zero = mx < GROUP_MAX_EPS
    wx = qw * x
    with np.errstate(all="ignore"):

        def mse(iscale, clamp):
            q = nearest_int(iscale[..., None] * x)
            q = (np.minimum(q, nmax) if clamp else q & 0xFF).astype(F32)  # first pass: uint8 store
            diff = x - (F32(1) / iscale)[..., None] * q
            return seq_sum(qw * diff * diff)

        iscale = F32(nmax) / mx
        best = mse(iscale, False)
        for step in (-4, -3, -2, -1, 1, 2, 3, 4):
            iscale_is = (F32(0.1) * F32(step) + F32(nmax)) / mx
            cur = mse(iscale_is, True)
            better = cur < best
            best = np.where(better, cur, best)
            iscale = np.where(better, iscale_is, iscale)
        q = np.minimum(nearest_int(iscale[..., None] * x), nmax)
        sumlx, suml2 = seq_sum(wx * q.astype(F32)), seq_sum(qw * q.astype(F32) * q.astype(F32))
        L = (q & 0xFF).astype(F32)  # ggml keeps L as uint8
        for _ in range(5):
            changed = False
            for i in range(x.shape[-1]):
                wi, li = qw[..., i], L[..., i]
                slx = sumlx - wx[..., i] * li
                sl2 = suml2 - wi * li * li
                new_l = np.minimum(nearest_int(x[..., i] * sl2 / slx), nmax).astype(F32)
                slx2 = slx + wx[..., i] * new_l
                sl22 = sl2 + wi * new_l * new_l
                upd = (slx > 0) & (sl2 > 0) & (new_l != li) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
                if upd.any():
                    changed = True
                    L[..., i] = np.where(upd, new_l.astype(np.int32) & 0xFF, li)
                    sumlx = np.where(upd, slx2, sumlx)
                    suml2 = np.where(upd, sl22, suml2)
            if not changed:
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return np.where(zero, F32(0), scale), np.where(zero[..., None], 0, L).astype(np.int32)


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


def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    xs = x.reshape(-1, 16, 16)
    scales, mins, L = make_qkx2_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
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


def quantize_q3_k(x: np.ndarray) -> np.ndarray:
    xs = x.reshape(-1, 16, 16)
    scales, L = make_q3_quants(xs, 4)
    max_scale = _signed_absmax(scales)
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
    av_x = np.sqrt(seq_sum(xs * xs) / F32(32))
    weights = av_x[..., None] + np.abs(xs)
    scales, mins, L = make_qkx2_quants(xs, weights, nmax, rmin, 0.1, nstep, False)
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
    sigma2 = F32(2) * seq_sum(xs.reshape(-1, QK_K) * xs.reshape(-1, QK_K)) / F32(QK_K)
    weights = qw * np.sqrt(sigma2[:, None, None] + xs * xs)
    scales, mins, L = make_qkx2_quants(xs, weights, nmax, -0.9, 0.05, 36, False)
    sw = seq_sum(weights)
    d_block, ls = make_qp_quants(scales, 63, sw)
    m_block, lm = make_qp_quants(mins, 63, sw)
    db, d = _fp16_round(d_block)
    mb, dmin = _fp16_round(m_block)
    ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
    return db, mb, _pack_scale_min_k4(ls, lm), _requantize(xs, d, dmin, ls, lm, nmax, L)


def quantize_q4_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    db, mb, scale_bytes, L = _quantize_q45_k(x, 15, -1.0, 20, qw)
    return np.concatenate([db, mb, scale_bytes, _pack_nibbles_64(L)], axis=-1)


def quantize_q5_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    db, mb, scale_bytes, L = _quantize_q45_k(x, 31, -0.5, 15, qw)
    return np.concatenate([db, mb, scale_bytes, _bits_by_32(L, 4), _pack_nibbles_64(L)], axis=-1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    xs = x.reshape(-1, 16, 16)
    scales, L = make_qx_quants(xs, 32)
    max_scale = _signed_absmax(scales)
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


def quantize_q8_k(x: np.ndarray) -> np.ndarray:
    mx = _signed_absmax(x)
    has = mx != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-127) / mx
        q = np.minimum(nearest_int(iscale[:, None] * x), 127)
        d = np.where(has, F32(1) / iscale, F32(0)).astype(F32)
    q = np.where(has[:, None], q, 0).astype(np.int8)
    bsums = q.reshape(-1, 16, 16).astype(np.int16).sum(axis=-1, dtype=np.int16)
    return np.concatenate([d.reshape(-1, 1).view(np.uint8), q.view(np.uint8), bsums.view(np.uint8)], axis=-1)


# --- dequantizers (same float operation order as ggml's dequantize_row_*) ---------------------


def dequantize_q2_k(b: np.ndarray) -> np.ndarray:
    sc = b[:, 0:16]
    d, dmin = f16_value(b[:, 80:82]), f16_value(b[:, 82:84])
    dl = (d * (sc & 0xF).astype(F32))[..., None]
    ml = (dmin * (sc >> 4).astype(F32))[..., None]
    q = _unpack_2bit(b[:, 16:80]).reshape(-1, 16, 16).astype(F32)
    return (dl * q - ml).reshape(-1, QK_K)


def dequantize_q3_k(b: np.ndarray) -> np.ndarray:
    d = f16_value(b[:, 108:110])
    dl = (d * (_unpack_scales_q3(b[:, 96:108]).astype(np.int8) - np.int8(32)).astype(F32))[..., None]
    low = _unpack_2bit(b[:, 32:96]).astype(np.int8)
    q = low - ((1 - _unbits_by_32(b[:, 0:32])) << 2).astype(np.int8)
    return (dl * q.reshape(-1, 16, 16).astype(F32)).reshape(-1, QK_K)


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


def dequantize_q6_k(b: np.ndarray) -> np.ndarray:
    ql = b[:, 0:128].reshape(-1, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    qh = b[:, 128:192].reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    q = ((ql & 0xF).reshape(-1, QK_K) | (qh & 3).reshape(-1, QK_K) << 4).astype(np.int8) - np.int8(32)
    sc = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(F32)
    dl = (f16_value(b[:, 208:210]) * sc)[..., None]
    return (dl * q.reshape(-1, 16, 16).astype(F32)).reshape(-1, QK_K)


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
