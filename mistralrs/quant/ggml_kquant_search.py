"""ggml's K-quant scale searches (ggml-quants.c), vectorised over groups, bit for bit.

Every function here works in *column layout*: a group of n elements (a 16- or 32-element
sub-block, or a super-block's 8 sub-block scales) is a column of an (n, groups) float32 array.
That layout makes every step one numpy call over all groups at once, and it makes ggml's
left-to-right float32 sums cheap: `colsum` adds row after row, which is exactly the order of
ggml's `for (i = 0; i < n; ++i) sum += ...`, while a sum along a contiguous axis would be
pairwise (another rounding) and `cumsum` is slow.

Bit-exactness rests on three rules, kept throughout:
- the same float32 operations in the same order as the C (`w*x*l` is `(w*x)*l`);
- the same tie rules (`if (err < best)` keeps the first best candidate);
- ggml's `nearest_int` (round half to even through the 1.5*2^23 trick). Where every value is
  known to lie within +-2^22 this equals `np.rint`, which is cheaper; where that cannot be
  shown (degenerate groups, infinities, NaN) the exact bit trick runs instead.

Instead of copying the candidate codes L on every accepted step, the searches remember the
(iscale, min) a group's best codes were rounded with and round them once more at the end;
rounding is deterministic, so that gives the same L.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
MAGIC = F32(12582912.0)  # 1.5 * 2^23
RINT_SAFE = F32(4194304.0)  # 2^22: below it nearest_int(v) == rint(v)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int, bit for bit: add 1.5*2^23 in float32 and read the mantissa.

    Round half to even for |v| < 2^22; larger values give the same garbage as in C, which
    the callers then clamp, so even degenerate blocks match ggml.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        bits = (np.asarray(v, F32) + MAGIC).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def colsum(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Sum of the rows of a 2-D float32 array, a[0] + a[1] + ... in that order, per column.

    numpy reduces over the outer axis of a C-contiguous array by adding whole rows into the
    output, i.e. sequentially per column; with a single column it would reduce pairwise
    instead, so narrow or strided inputs take the (slower) cumulative sum.
    """
    if a.shape[1] >= 4 and a.flags.c_contiguous:
        return np.add.reduce(a, axis=0, out=out)
    s = np.cumsum(a.T, axis=-1, dtype=F32)[:, -1]  # sequential, but slow
    if out is None:
        return s
    out[...] = s
    return out


def to_columns(x: np.ndarray, n: int) -> np.ndarray:
    """(..., n) -> contiguous (n, groups)."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


def round_clip(t: np.ndarray, lo: int, hi: int, safe: bool) -> np.ndarray:
    """In place: t <- MAX(lo, MIN(hi, nearest_int(t))) as float32. `safe`: every |t| < 2^22.

    (np.rint gives -0.0 where nearest_int gives 0. No sum, comparison or squared error in
    the searches can tell them apart: a float sum is -0.0 only if every term is, and then
    the group has D <= 0 or suml2 == 0 and is skipped, as in ggml.)
    """
    if safe:
        np.rint(t, out=t)
        np.clip(t, lo, hi, out=t)
    else:
        t[...] = np.clip(nearest_int(t), lo, hi)
    return t


def _all_below(bound: np.ndarray, skip: np.ndarray) -> bool:
    """True when every group not in `skip` has bound < 2^22 (NaN counts as not below)."""
    ok = bound < RINT_SAFE
    ok |= skip
    return np.count_nonzero(ok) == ok.size


def signed_absmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """The element with the largest |x| along `axis`, as ggml's loop finds it.

    `amax = 0; for (...) if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }`: the
    first of the largest, NaN never (np.argmax would pick a NaN), and 0 when no |x| > 0.
    """
    a = np.abs(x)
    i = np.expand_dims(a.argmax(axis=axis), axis)
    amax = np.take_along_axis(a, i, axis=axis)
    if np.isnan(amax).any():  # np.argmax stops at a NaN, which ggml's `>` never takes
        np.copyto(a, 0, where=np.isnan(a))
        i = np.expand_dims(a.argmax(axis=axis), axis)
        amax = np.take_along_axis(a, i, axis=axis)
    return np.where(amax > 0, np.take_along_axis(x, i, axis=axis), F32(0)).squeeze(axis)


# --- make_qkx2_quants: affine (scale, min) search ------------------------------------------


def make_qkx2_quants(xt, wt, nmax, rmin, rdelta, nstep, use_mad):
    """ggml's make_qkx2_quants per column of xt with weights wt (both (n, groups)).

    Returns (scale, the_min (= -min), L float32 (n, groups)).
    """
    xmin = xt.min(axis=0)
    mn0 = np.minimum(xmin, F32(0))
    mx = xt.max(axis=0)
    flat = mx == mn0  # ggml returns L = 0, scale 0 before searching
    t = np.empty_like(xt)
    b = np.empty_like(xt)
    wl = np.empty_like(xt)
    sum_w = colsum(wt)
    np.multiply(wt, xt, out=b)
    sum_x = colsum(b)

    def grid(iscale, mn, d):
        """Laux[i] = MAX(0, MIN(nmax, nearest_int(iscale*(x[i] - min)))), into t; d = max - min."""
        # x - min lies in [xmin - min, max - min] (rounding is monotonic), so this bounds |t|.
        bound = np.maximum(np.abs((xmin - mn) * iscale), np.abs(d * iscale))
        np.subtract(xt, mn, out=t)
        np.multiply(t, iscale, out=t)
        return round_clip(t, 0, nmax, _all_below(bound, flat))

    def error(scale, mn, la, out=None):
        """sum_i w[i] * err(scale*L[i] + min - x[i]), in order."""
        np.multiply(la, scale, out=b)
        np.add(b, mn, out=b)
        np.subtract(b, xt, out=b)
        (np.abs if use_mad else np.square)(b, out=b)
        np.multiply(b, wt, out=b)
        return colsum(b, out)

    with np.errstate(all="ignore"):
        # The search state, one row each, so that accepting a step is a single masked copy:
        # best error, scale, min, and the (iscale, min) the best L was rounded with.
        state = np.empty((5, len(mx)), F32)
        best, scale, mn, l_iscale, l_min = state
        mn[:] = l_min[:] = mn0
        d = mx - mn0
        l_iscale[:] = F32(nmax) / d
        scale[:] = F32(1) / l_iscale
        best[:] = error(scale, mn, grid(l_iscale, mn, d))
        best[flat] = -np.inf  # no candidate is ever better
        # A step's candidate is computed straight into the rows of `cand`.
        cand = np.empty_like(state)
        cur, this_scale, this_min, iscale, cand_lmin = cand
        for step in range(nstep + 1):
            # ggml re-reads `min` each step, so an accepted step moves the grid of the next one.
            d = mx - mn
            np.divide(F32(rmin) + F32(rdelta) * F32(step) + F32(nmax), d, out=iscale)
            la = grid(iscale, mn, d)
            np.multiply(wt, la, out=wl)
            sum_l = colsum(wl)
            np.multiply(wl, la, out=b)
            sum_l2 = colsum(b)
            np.multiply(wl, xt, out=b)
            sum_xl = colsum(b)
            D = sum_w * sum_l2 - sum_l * sum_l
            np.divide(sum_w * sum_xl - sum_x * sum_l, D, out=this_scale)
            np.divide(sum_l2 * sum_x - sum_l * sum_xl, D, out=this_min)
            pos = this_min > 0
            if np.count_nonzero(pos):
                this_min[pos] = 0
                this_scale[pos] = (sum_xl / sum_l2)[pos]
            error(this_scale, this_min, la, out=cur)
            better = D > 0
            better &= cur < best
            if np.count_nonzero(better):
                cand_lmin[:] = mn
                np.copyto(state, cand, where=better)
        L = grid(l_iscale, l_min, mx - l_min)
    L[:, flat] = 0
    return np.where(flat, F32(0), scale), -mn, L


# --- make_qx_quants: symmetric search (rmse_type 1) -----------------------------------------


def make_qx_quants(xt, nmax, wt=None):
    """ggml's make_qx_quants(rmse_type=1) per column: weights x^2, or `wt` (the imatrix).

    Returns (scale, L float32 (n, groups) in [0, 2*nmax)).
    """
    mx = signed_absmax(xt)
    zero = np.abs(mx) < GROUP_MAX_EPS
    w = xt * xt if wt is None else wt
    wx = w * xt
    t = np.empty_like(xt)
    b = np.empty_like(xt)

    def trial(iscale):
        # |iscale*x| <= |iscale*max| by monotonic rounding.
        np.multiply(xt, iscale, out=t)
        round_clip(t, -nmax, nmax - 1, _all_below(np.abs(iscale * mx), zero))
        np.multiply(wx, t, out=b)
        sumlx = colsum(b)
        np.multiply(w, t, out=b)
        np.multiply(b, t, out=b)
        return sumlx, colsum(b)

    with np.errstate(all="ignore"):
        iscale = F32(-nmax) / mx
        sumlx, suml2 = trial(iscale)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        l_iscale = iscale
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mx
            sumlx, suml2 = trial(iscale)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if better.any():
                scale = np.where(better, sumlx / suml2, scale)
                best = np.where(better, scale * sumlx, best)
                l_iscale = np.where(better, iscale, l_iscale)
        np.multiply(xt, l_iscale, out=t)
        L = round_clip(t, -nmax, nmax - 1, _all_below(np.abs(l_iscale * mx), zero))
    L += nmax
    L[:, zero] = 0
    return np.where(zero, F32(0), scale), L


# --- make_q3_quants and make_qp_quants: coordinate descent ----------------------------------


def _new_codes(x, sl2, slx, lo_bits, hi_bits):
    """MAX(lo, MIN(hi, nearest_int(x*sl2/slx))) (lo_bits None: MIN only), exactly, as float32."""
    t = x * sl2
    t /= slx
    t += MAGIC
    bits = t.view(np.int32)
    bits &= 0x007FFFFF
    np.minimum(bits, hi_bits, out=bits)
    if lo_bits is not None:
        np.maximum(bits, lo_bits, out=bits)
    return np.subtract(bits, np.int32(0x00400000), dtype=F32)


def _descend(xt, w, wx, L, sumlx, suml2, lo, hi, uint8_codes):
    """ggml's "itry" loop: up to 5 passes, each over the elements in order, per column.

    make_q3_quants (uint8_codes False, the codes clamp to [lo, hi]) and make_qp_quants
    (uint8_codes True: MIN(nmax, .) only, `sl2 > 0` tested first, L stored to a uint8_t)
    differ in those details only. L (float32, (n, groups)), sumlx and suml2 are updated in
    place. The first pass over many columns goes element by element; whatever is left (the
    columns that changed, usually a small minority) goes to `_descend_rounds`.
    """
    n, m = xt.shape
    lo_bits = None if lo is None else np.int32(0x00400000 + lo)
    hi_bits = np.int32(0x00400000 + hi)
    state = np.stack([sumlx, suml2, sumlx])
    slx_all, sl2_all, sq = state  # sumlx, suml2, sumlx*sumlx
    sq *= slx_all
    # L[i] changes only at element i, so its terms can be taken for the whole pass up front.
    wxl = wx * L
    wll = w * L
    wll *= L
    changed = np.zeros(m, bool)
    cand = np.empty_like(state)
    for i in range(n):
        li = L[i]
        slx = slx_all - wxl[i]
        sl2 = sl2_all - wll[i]
        new_l = _new_codes(xt[i], sl2, slx, lo_bits, hi_bits)
        slx2 = wx[i] * new_l
        slx2 += slx
        sl22 = w[i] * new_l
        sl22 *= new_l
        sl22 += sl2
        upd = np.minimum(slx, sl2 if uint8_codes else sl22) > 0
        upd &= new_l != li
        a = slx2 * slx2
        upd &= a * sl2_all > sq * sl22
        if np.count_nonzero(upd):
            changed |= upd
            if uint8_codes:
                new_l = (new_l.astype(np.int32) & 0xFF).astype(F32)
            np.copyto(li, new_l, where=upd)
            cand[0], cand[1], cand[2] = slx2, sl22, a
            np.copyto(state, cand, where=upd)
    sumlx[:], suml2[:] = slx_all, sl2_all
    cols = np.flatnonzero(changed)
    if len(cols):
        _descend_rounds(xt, w, wx, L, sumlx, suml2, cols, lo_bits, hi_bits, uint8_codes)
    return L, sumlx, suml2


def _descend_rounds(xt, w, wx, L, sumlx, suml2, cols, lo_bits, hi_bits, uint8_codes):
    """Passes 2 to 5 of the itry loop, for the columns `cols` that the first pass changed.

    Until a column accepts a change, its sums stay as they are, so every element it has yet
    to visit in this pass can be tried at once: the first acceptance found that way is the
    one ggml makes. Each round applies it (one per column) and carries on after it; a column
    with nothing left to accept ends its pass, and starts another if that pass changed
    anything (at most 5 in all). Columns that finish drop out.
    """
    n = xt.shape[0]
    X, Wt, WX, Lc = xt[:, cols], w[:, cols], wx[:, cols], L[:, cols]
    slx_all, sl2_all = sumlx[cols], suml2[cols]
    p = np.zeros(len(cols), np.int64)  # the next element to visit in the current pass
    npass = np.ones(len(cols), np.int64)  # passes run
    changed = np.zeros(len(cols), bool)
    rows = np.arange(n)[:, None]
    while True:
        slx = slx_all - WX * Lc
        sl2 = sl2_all - Wt * Lc * Lc
        new_l = _new_codes(X, sl2, slx, lo_bits, hi_bits)
        slx2 = WX * new_l + slx
        sl22 = Wt * new_l * new_l + sl2
        upd = np.minimum(slx, sl2 if uint8_codes else sl22) > 0
        upd &= new_l != Lc
        upd &= slx2 * slx2 * sl2_all > (slx_all * slx_all) * sl22
        upd &= rows >= p
        found = upd.any(axis=0)
        c = np.flatnonzero(found)
        if len(c):
            r = upd[:, c].argmax(axis=0)  # the first acceptance in each column
            v = new_l[r, c]
            Lc[r, c] = (v.astype(np.int32) & 0xFF).astype(F32) if uint8_codes else v
            slx_all[c] = slx2[r, c]
            sl2_all[c] = sl22[r, c]
            changed[c] = True
            p[c] = r + 1
        end = ~found | (p >= n)  # the pass is over
        if np.count_nonzero(end):
            npass[end] += 1
            again = end & changed & (npass < 5)
            p[again] = 0
            changed[again] = False
            keep = ~end | again
            if not np.count_nonzero(~keep):
                continue
            done = np.flatnonzero(~keep)
            L[:, cols[done]] = Lc[:, done]
            sumlx[cols[done]] = slx_all[done]
            suml2[cols[done]] = sl2_all[done]
            if not np.count_nonzero(keep):
                return
            k = np.flatnonzero(keep)
            cols, X, Wt, WX, Lc = cols[k], X[:, k], Wt[:, k], WX[:, k], Lc[:, k]
            slx_all, sl2_all, p, npass, changed = slx_all[k], sl2_all[k], p[k], npass[k], changed[k]


def make_q3_quants(xt, nmax):
    """ggml's make_q3_quants(do_rmse=true) per column; returns (scale, L float32 in [0, 2*nmax))."""
    mx = signed_absmax(xt)
    zero = np.abs(mx) < GROUP_MAX_EPS
    w = xt * xt
    wx = w * xt
    with np.errstate(all="ignore"):
        iscale = F32(-nmax) / mx
        L = round_clip(xt * iscale, -nmax, nmax - 1, _all_below(np.abs(iscale * mx), zero))
        sumlx = colsum(wx * L)
        suml2 = colsum(w * L * L)
        L, sumlx, suml2 = _descend(xt, w, wx, L, sumlx, suml2, -nmax, nmax - 1, False)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    L += nmax
    L[:, zero] = 0
    return np.where(zero, F32(0), scale), L


def make_qp_quants(xt, nmax, wt):
    """ggml's make_qp_quants per column (non-negative x, weights wt); returns (scale, L float32)."""
    mx = np.maximum(xt.max(axis=0), F32(0))
    zero = mx < GROUP_MAX_EPS
    wx = wt * xt
    with np.errstate(all="ignore"):

        def mse(iscale, clamp):
            q = nearest_int(xt * iscale)
            q = (np.minimum(q, nmax) if clamp else q & 0xFF).astype(F32)  # first pass: uint8 store
            diff = xt - (F32(1) / iscale) * q
            return colsum(wt * diff * diff)

        iscale = F32(nmax) / mx
        best = mse(iscale, False)
        for step in (-4, -3, -2, -1, 1, 2, 3, 4):
            iscale_is = (F32(0.1) * F32(step) + F32(nmax)) / mx
            cur = mse(iscale_is, True)
            better = cur < best
            best = np.where(better, cur, best)
            iscale = np.where(better, iscale_is, iscale)
        q = np.minimum(nearest_int(xt * iscale), nmax).astype(F32)
        sumlx, suml2 = colsum(wx * q), colsum(wt * q * q)
        L = (q.astype(np.int32) & 0xFF).astype(F32)  # ggml keeps L as uint8
        L, sumlx, suml2 = _descend(xt, wt, wx, L, sumlx, suml2, None, nmax, True)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    L[:, zero] = 0
    return np.where(zero, F32(0), scale), L
