"""GGML block formats against their references.

- Dequantizers: bit-exact with `gguf.quants.dequantize` on random bytes (random bytes reach
  every bit of the layout, which a quantizer's output might not).
- Legacy quantizers (Q4_0 ... Q8_0): byte-exact with `gguf.quants.quantize`, which is itself
  byte-exact with ggml.
- K-quant quantizers (gguf-py cannot quantize them): round-trip error within the bounds
  ggml's own quantizers reach, and gguf dequantizes our bytes to exactly our floats.
- When MISTRALRS_GGML_LIB names a built libggml-base.so, every quantizer is also compared
  byte for byte with ggml's C reference (`ggml_quantize_chunk`, `quantize_row_q8_*_ref`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from mistralrs.errors import UserError
from mistralrs.quant import ggml_blocks as gb
from mistralrs.quant import ggml_kquant_search as ks
from mistralrs.quant import ggml_kquants as kq

LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
GGUF_KQUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# Byte offsets of the high byte of each fp16 scale in a block: clearing bit 6 there keeps the
# exponent below 31, so random bytes decode to finite floats.
HALF_HIGH_BYTES = {
    "Q4_0": [1], "Q4_1": [1, 3], "Q5_0": [1], "Q5_1": [1, 3], "Q8_0": [1],
    "Q2_K": [81, 83], "Q3_K": [109], "Q4_K": [1, 3], "Q5_K": [1, 3], "Q6_K": [209],
}  # fmt: skip

# RMSE of ggml's own quantizers on N(0,1) data (research note, 8x512), with ~12% slack.
RMSE_BOUND = {"Q2_K": 0.33, "Q3_K": 0.17, "Q4_K": 0.08, "Q5_K": 0.04, "Q6_K": 0.02, "Q8_K": 0.008}


def random_blocks(kind: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, 256, (rows, gb.row_bytes(kind, cols)), dtype=np.uint8)
    blocks = data.reshape(-1, gb.type_size(kind))
    for off in HALF_HIGH_BYTES[kind]:
        blocks[:, off] &= 0xBF
    return data


def awkward_weights(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Gaussian rows plus the blocks that take the unusual branches of the quantizers."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[1] = 0  # all-zero blocks
    w[2] = 0.75  # constant blocks (max == min)
    w[3] = np.abs(w[3])  # no negative values (min clamps to 0)
    w[4] *= np.float32(1e-20)  # below GROUP_MAX_EPS in some blocks
    w[5, ::7] *= 1000  # outliers
    w[6] = np.round(w[6] * 4) / 4  # ties for the rounding and argmax rules
    w[7] = -np.abs(w[7])
    return w


def test_sizes_match_ggml():
    for kind in gb.KINDS:
        bs, ts = gguf.GGML_QUANT_SIZES[T[kind]]
        assert gb.block_size(kind) == bs
        # gguf-py says 40 for Q8_1; ggml-common.h static_asserts 2 halves + 32 int8.
        assert gb.type_size(kind) == (36 if kind == "Q8_1" else ts)
        assert gb.row_bytes(kind, 4 * bs) == 4 * gb.type_size(kind)


@pytest.mark.parametrize("kind", LEGACY + GGUF_KQUANTS)
def test_dequantize_bit_exact_with_gguf(kind):
    data = random_blocks(kind, 16, 1024)
    ours = gb.dequantize(data, kind, 1024)
    ref = gguf.quants.dequantize(data, T[kind])
    assert ours.dtype == np.float32 and ours.shape == (16, 1024)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("kind", LEGACY)
def test_legacy_quantize_bit_exact_with_gguf(kind):
    w = awkward_weights(8, 512)
    ours = gb.quantize(w, kind)
    np.testing.assert_array_equal(ours, gguf.quants.quantize(w, T[kind]))


@pytest.mark.parametrize("kind", GGUF_KQUANTS)
def test_kquant_layout_agrees_with_gguf(kind):
    w = awkward_weights(8, 512)
    q = gb.quantize(w, kind)
    assert q.shape == (8, gb.row_bytes(kind, 512)) and q.dtype == np.uint8
    ours = gb.dequantize(q, kind, 512)
    np.testing.assert_array_equal(ours.view(np.uint32), gguf.quants.dequantize(q, T[kind]).view(np.uint32))
    assert np.all(ours[1] == 0)  # zeros stay zeros
    np.testing.assert_allclose(ours[2], 0.75, rtol=0.02)  # a constant survives


@pytest.mark.parametrize("kind", tuple(RMSE_BOUND))
def test_kquant_round_trip_error(kind):
    w = np.random.default_rng(3).standard_normal((8, 512)).astype(np.float32)
    err = np.sqrt(np.mean((gb.dequantize(gb.quantize(w, kind), kind, 512) - w) ** 2))
    assert err < RMSE_BOUND[kind]


@pytest.mark.parametrize("kind", ("Q8_1", "Q8_K"))
def test_activation_formats(kind):
    w = np.random.default_rng(4).standard_normal((4, 512)).astype(np.float32)
    q = gb.quantize(w, kind)
    back = gb.dequantize(q, kind, 512)
    assert np.abs(back - w).max() <= np.abs(w).max() / 127 * 0.51
    blocks = q.reshape(-1, gb.type_size(kind))
    if kind == "Q8_K":  # bsums are the int16 sums of each 16 quants
        qs = blocks[:, 4:260].view(np.int8).astype(np.int64).reshape(-1, 16, 16).sum(-1)
        np.testing.assert_array_equal(blocks[:, 260:].view(np.int16), qs)
    else:  # s = d * sum(qs)
        d = blocks[:, 0:2].view(np.float16).astype(np.float32)[:, 0]
        s = blocks[:, 2:4].view(np.float16).astype(np.float32)[:, 0]
        np.testing.assert_allclose(s, d * blocks[:, 4:].view(np.int8).sum(-1), rtol=1e-3, atol=1e-3)


def importance(cols: int) -> np.ndarray:
    im = np.random.default_rng(2).random(cols).astype(np.float32) ** 2
    im[:40] = 0  # columns llama-imatrix never saw active
    return im


@pytest.mark.parametrize("kind", gb.IMATRIX_KINDS)
def test_imatrix_lowers_weighted_error(kind):
    w, im = awkward_weights(8, 1024, seed=3), importance(1024)
    q = gb.quantize(w, kind, imatrix=im)
    np.testing.assert_array_equal(gb.dequantize(q, kind, 1024), gguf.quants.dequantize(q, T[kind]))
    rows = [0, 3, 6, 7]  # the ordinary rows (not the degenerate ones)

    def weighted_err(data):
        return np.mean(im * (gb.dequantize(data, kind, 1024) - w)[rows] ** 2)

    assert weighted_err(q) < 0.95 * weighted_err(gb.quantize(w, kind))


def test_large_matrix_is_chunked_consistently():
    # Blocks are independent: quantizing in slices must equal quantizing row by row.
    w = np.random.default_rng(5).standard_normal((160, 1024)).astype(np.float32)
    whole = gb.quantize(w, "Q4_K")
    assert whole.shape[0] * whole.shape[1] // 144 * 256 > gb._CHUNK_ELEMENTS
    np.testing.assert_array_equal(whole[37:38], gb.quantize(w[37:38], "Q4_K"))


def test_errors():
    w = np.zeros((2, 96), np.float32)
    with pytest.raises(UserError, match="multiple of 256"):
        gb.quantize(w, "Q4_K")
    with pytest.raises(UserError, match="multiple of 32"):
        gb.row_bytes("Q4_0", 40)
    with pytest.raises(UserError, match="Unknown GGML"):
        gb.quantize(w, "Q7_0")
    with pytest.raises(UserError, match="imatrix"):
        gb.quantize(np.zeros((1, 256), np.float32), "Q6_K", imatrix=np.ones(256, np.float32))
    with pytest.raises(UserError, match="shape"):
        gb.quantize(np.zeros((1, 256), np.float32), "Q4_K", imatrix=np.ones(128, np.float32))
    assert gb.block_size("q4_k") == 256  # kind names are case-insensitive


# --- optional: byte-exact against ggml's C reference quantizers ----------------------------------

GGML_TYPE_IDS = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q8_1": 9,
                 "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "Q8_K": 15}  # fmt: skip


@pytest.fixture(scope="module")
def libggml():
    path = os.environ.get("MISTRALRS_GGML_LIB")
    if not path or not os.path.exists(path):
        pytest.skip("set MISTRALRS_GGML_LIB to a built libggml-base.so to compare with ggml's C quantizers")
    lib = ctypes.CDLL(path)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = (
        [ctypes.c_int] + [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    )
    return lib


def ggml_quantize(lib, w: np.ndarray, kind: str) -> np.ndarray:
    w = np.ascontiguousarray(w, np.float32)
    out = np.zeros((w.shape[0], gb.row_bytes(kind, w.shape[1])), np.uint8)
    if kind in ("Q8_1", "Q8_K"):  # activation types: ggml_quantize_chunk refuses them
        fn = getattr(lib, f"quantize_row_{kind[:2].lower()}_{kind[3]}_ref")
        fn(ctypes.c_void_p(w.ctypes.data), ctypes.c_void_p(out.ctypes.data), ctypes.c_int64(w.size))
    else:
        lib.ggml_quantize_chunk(GGML_TYPE_IDS[kind], w.ctypes.data, out.ctypes.data, 0, *w.shape, None)
    return out


@pytest.mark.parametrize("kind", gb.KINDS)
def test_quantize_byte_exact_with_ggml(libggml, kind):
    w = awkward_weights(8, 1024, seed=7)
    if kind == "Q8_K":
        w[1:3] = 1.0  # ggml leaves bsums of an all-zero Q8_K block uninitialised
    np.testing.assert_array_equal(gb.quantize(w, kind), ggml_quantize(libggml, w, kind))


@pytest.mark.parametrize("kind", gb.IMATRIX_KINDS)
def test_imatrix_quantize_byte_exact_with_ggml(libggml, kind):
    w, im = awkward_weights(8, 1024, seed=3), importance(1024)
    out = np.zeros((8, gb.row_bytes(kind, 1024)), np.uint8)
    libggml.ggml_quantize_chunk(
        GGML_TYPE_IDS[kind], w.ctypes.data, out.ctypes.data, 0, 8, 1024, im.ctypes.data
    )
    np.testing.assert_array_equal(gb.quantize(w, kind, imatrix=im), out)


# --- K-quant searches: pinned bytes -------------------------------------------------------------


def pinned_inputs():
    """Seeded inputs that reach the unusual branches of the K-quant scale searches."""
    rng = np.random.default_rng(2024)
    w = rng.standard_normal((24, 512)).astype(np.float32)
    w[0] = 0  # all-zero blocks
    w[1] = 0.75  # constant blocks (max == min)
    w[2] = np.abs(w[2])  # no negative values
    w[3] = -np.abs(w[3])
    w[4] *= np.float32(1e-30)  # below GROUP_MAX_EPS
    w[5] *= np.float32(1e-17)  # around GROUP_MAX_EPS
    w[5, ::5] *= 1000
    w[6] *= np.float32(1e37)  # huge: the sums overflow
    w[7, ::3] = np.float32(3e38)
    w[8, ::13] *= 300  # outliers
    w[9] = np.round(w[9] * 4) / 4  # ties
    w[10] = rng.integers(-8, 8, 512)  # ties
    w[11, ::16] = 0
    w[11, 100:140] = 1e-16
    w[12, 16:48] = 0  # zero sub-blocks in a live block
    w[13] = np.repeat(rng.standard_normal(32), 16)  # constant sub-blocks
    scale = rng.exponential(1.0, (10, 1)).astype(np.float32)
    # Cubed by multiplying: numpy's float32 power differs by an ulp between SIMD paths
    # (AVX-512 vs AVX2), which moved Q8_K's float32 scales and so its digest.
    w[14:] *= scale * scale * scale
    ims = [rng.random(512).astype(np.float32) * 3 + 0.01, (rng.standard_normal(512) ** 2).astype(np.float32)]
    ims[1][:40] = 0
    ims[1][100:110] = 1e-30
    return w, ims


# sha256 prefixes of gb.quantize(pinned_inputs()) (then with each imatrix). These bytes equal
# ggml's own (test_pinned_inputs_byte_exact_with_ggml, against libggml-base.so), and all but
# the Q3_K and Q6_K ones those of the first, block-by-block numpy port; that port let a NaN
# sub-block scale (overflow in rows of |x| ~ 1e37) win the largest-scale search, where ggml
# skips NaN.
PINNED_DIGESTS = {
    "Q2_K": ("961f1a94748e475b",),
    "Q3_K": ("e095e53e7182f0e0",),
    "Q4_K": ("bf5d1392dc23413e", "5e14f6daae058351", "176beafb868ae029"),
    "Q5_K": ("1f6e1e0649c1c89f", "6217a5dae2dd75a5", "2cac7ada12c0ab4f"),
    "Q6_K": ("5184dfc181b4ad43",),
    "Q8_K": ("ad1514d305fb8fe0",),
}


@pytest.mark.parametrize("kind", sorted(PINNED_DIGESTS))
def test_kquant_bytes_are_pinned(kind):
    w, ims = pinned_inputs()
    with np.errstate(all="ignore"):  # the huge rows overflow, as they do in ggml
        outs = [gb.quantize(w, kind)]
        if kind in gb.IMATRIX_KINDS:
            outs += [gb.quantize(w, kind, imatrix=im) for im in ims]
    digests = tuple(hashlib.sha256(o.tobytes()).hexdigest()[:16] for o in outs)
    assert digests == PINNED_DIGESTS[kind]


@pytest.mark.parametrize("kind", GGUF_KQUANTS)
def test_pinned_inputs_byte_exact_with_ggml(libggml, kind):
    w, ims = pinned_inputs()
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(gb.quantize(w, kind), ggml_quantize(libggml, w, kind))
        for im in ims if kind in gb.IMATRIX_KINDS else ():
            out = np.zeros((w.shape[0], gb.row_bytes(kind, w.shape[1])), np.uint8)
            libggml.ggml_quantize_chunk(
                GGML_TYPE_IDS[kind], w.ctypes.data, out.ctypes.data, 0, *w.shape, im.ctypes.data
            )
            np.testing.assert_array_equal(gb.quantize(w, kind, imatrix=im), out)


@pytest.mark.parametrize("n", [8, 16, 32, 256])
def test_colsum_adds_rows_in_order(n):
    # The searches rely on numpy reducing over the outer axis row by row (ggml's loop order).
    rng = np.random.default_rng(n)
    for cols in [1, 2, 3, 4, 5, 7, 8, 9, 16, 33, 100, 1024, 4099]:
        a = (rng.standard_normal((n, cols)) * np.exp(rng.standard_normal((n, cols)) * 4)).astype(np.float32)
        expect = a[0].copy()
        for i in range(1, n):
            expect = expect + a[i]
        np.testing.assert_array_equal(ks.colsum(a), expect)
        np.testing.assert_array_equal(ks.colsum(np.asfortranarray(a)), expect)


@pytest.mark.parametrize("kind", sorted(kq.QUANTIZE))
def test_kquant_slices_and_threads_give_the_same_bytes(kind, monkeypatch):
    # A K-quant quantizer given many blocks works through slices on a thread pool.
    w, ims = pinned_inputs()
    blocks = w.reshape(-1, 256)
    qw = np.broadcast_to(ims[1].reshape(1, -1, 256), (24, 2, 256)).reshape(-1, 256)
    fn = kq.QUANTIZE[kind]
    with np.errstate(all="ignore"):
        expect = [gb.quantize(w, kind).reshape(len(blocks), -1)]
        if kind in gb.IMATRIX_KINDS:
            expect.append(gb.quantize(w, kind, imatrix=ims[1]).reshape(len(blocks), -1))
        monkeypatch.setattr(kq, "CHUNK_BLOCKS", 5)
        monkeypatch.setattr(kq, "MAX_THREADS", 3)
        np.testing.assert_array_equal(fn(blocks), expect[0])
        if kind in gb.IMATRIX_KINDS:
            np.testing.assert_array_equal(fn(blocks, qw), expect[1])
