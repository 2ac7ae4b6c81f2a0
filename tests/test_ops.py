"""The Ops protocol: MLX against torch (the reference backend), and numpy references.

Cross-backend tests feed both backends the same numpy inputs and compare the
results; they are skipped when either library is missing. Tests of a single
backend's own properties run for each backend that is installed.
"""

from __future__ import annotations

import numpy as np
import pytest

from mistralrs.backends.ops import Ops

F32_TOL = 1e-5  # relative to the largest magnitude of the reference
BF16_TOL = 1e-2  # a few bf16 ulps (2**-8): each side rounds its own intermediates


def _torch_ops() -> Ops:
    pytest.importorskip("torch")
    from mistralrs.backends.torch_ops import TorchOps

    return TorchOps(cpu=True)


def _mlx_ops() -> Ops:
    pytest.importorskip("mlx.core")
    from mistralrs.backends.mlx_ops import MlxOps

    return MlxOps(cpu=True)


@pytest.fixture(scope="module")
def pair() -> tuple[Ops, Ops]:
    """(torch, mlx): torch is the reference."""
    return _torch_ops(), _mlx_ops()


@pytest.fixture(params=["torch", "mlx"])
def ops(request) -> Ops:
    return _torch_ops() if request.param == "torch" else _mlx_ops()


def rand(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def tol(dtype: str) -> float:
    return F32_TOL if dtype == "float32" else BF16_TOL


def assert_close(actual: np.ndarray, expected: np.ndarray, rel: float) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-30)
    err = float(np.abs(actual.astype(np.float64) - expected).max())
    assert err <= rel * scale, f"max error {err:.3g} > {rel:.1g} * {scale:.3g}"


def both(pair, fn, *arrays, dtype="float32"):
    """fn(ops, *tensors) on each backend, from the same numpy inputs; results as numpy."""
    outs = []
    for o in pair:
        tensors = [o.asarray(a, dtype if a.dtype.kind == "f" else None) for a in arrays]
        result = fn(o, *tensors)
        if isinstance(result, (tuple, list)):
            outs.append([o.to_numpy(r) for r in result])
        else:
            outs.append(o.to_numpy(result))
    return outs


def compare(pair, fn, *arrays, dtype="float32", rel=None):
    ref, out = both(pair, fn, *arrays, dtype=dtype)
    assert_close(out, ref, tol(dtype) if rel is None else rel)


# ---- data --------------------------------------------------------------------


def test_get_ops_builds_the_mlx_backend():
    pytest.importorskip("mlx.core")
    from mistralrs.backends import get_ops

    ops = get_ops("mlx", cpu=True)
    assert ops.name == "mlx" and ops.device == "cpu"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_roundtrip_and_dtypes(ops, dtype):
    a = rand(3, 4)
    x = ops.asarray(a, dtype)
    assert ops.dtype_name(x) == dtype
    back = ops.to_numpy(x)
    assert back.dtype == np.float32
    assert_close(back, a, tol(dtype))
    assert ops.dtype_name(ops.astype(x, "float32")) == "float32"
    assert ops.dtype_name(ops.zeros((2, 3), dtype)) == dtype
    assert ops.to_numpy(ops.zeros((2, 3), dtype)).tolist() == [[0.0] * 3] * 2


def test_asarray_keeps_integer_dtypes_and_lists(ops):
    assert ops.dtype_name(ops.asarray(np.arange(4, dtype=np.int32))) == "int32"
    assert ops.dtype_name(ops.asarray(np.arange(4, dtype=np.int64))) == "int64"
    assert ops.tolist(ops.asarray([1, 2, 3], "int32")) == [1, 2, 3]


def test_arange_item_tolist(ops):
    r = ops.arange(3, 7)
    assert ops.dtype_name(r) in ("int32", "int64")
    assert ops.tolist(r) == [3, 4, 5, 6]
    assert ops.item(ops.asarray(np.array(2.5, np.float32))) == 2.5
    assert ops.item(ops.asarray(np.array(7, np.int32))) == 7


def test_eval_async_eval_synchronize(ops):
    x = ops.asarray(rand(4)) * 2
    ops.async_eval(x)
    ops.eval(x)
    ops.synchronize()
    assert_close(ops.to_numpy(x), rand(4) * 2, F32_TOL)


def test_load_safetensors_casts_floats_only(ops, tmp_path):
    from safetensors.numpy import save_file

    path = str(tmp_path / "w.safetensors")
    save_file({"w": rand(3, 2), "h": rand(2).astype(np.float16), "ids": np.arange(5, dtype=np.int32)}, path)

    cast = ops.load_safetensors(path, "bfloat16")
    dtypes = {k: ops.dtype_name(v) for k, v in cast.items()}
    assert dtypes == {"w": "bfloat16", "h": "bfloat16", "ids": "int32"}
    assert_close(ops.to_numpy(cast["w"]), rand(3, 2), BF16_TOL)
    assert ops.tolist(cast["ids"]) == [0, 1, 2, 3, 4]

    kept = ops.load_safetensors(path, None)
    assert ops.dtype_name(kept["w"]) == "float32" and ops.dtype_name(kept["h"]) == "float16"
    assert np.array_equal(ops.to_numpy(kept["w"]), rand(3, 2))


# ---- shape -------------------------------------------------------------------


def test_transpose_concat_split(pair):
    a, b = rand(2, 3, 4), rand(2, 5, 4, seed=1)
    compare(pair, lambda o, x: o.transpose(x, (2, 0, 1)), a, rel=0)
    compare(pair, lambda o, x, y: o.concat([x, y], axis=1), a, b, rel=0)
    ref, out = both(pair, lambda o, x: o.split(x, [1, 4, 3], axis=1), rand(2, 8, 3))
    assert [p.shape for p in out] == [(2, 1, 3), (2, 4, 3), (2, 3, 3)]
    for r, m in zip(ref, out, strict=True):
        assert np.array_equal(r, m)


# ---- layers ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [(1, 1), (2, 3)], ids=["one-row", "batch"])
def test_linear(pair, dtype, bias, rows):
    x, w, b = rand(*rows, 64), rand(48, 64, seed=1) / 8, rand(48, seed=2)
    if bias:
        compare(pair, lambda o, x, w, b: o.linear(x, o.prepare_linear(w), b), x, w, b, dtype=dtype)
    else:
        compare(pair, lambda o, x, w: o.linear(x, o.prepare_linear(w)), x, w, dtype=dtype)


@pytest.mark.parametrize("rows", [1, 3, 4, 70])
@pytest.mark.parametrize("bias", [False, True])
def test_bf16_linear_on_a_cpu_without_native_bf16(monkeypatch, rows, bias):
    """AVX2-only CPUs cannot pack bf16 for oneDNN: the weight stays bf16, prompt chunks run in f32."""
    torch = pytest.importorskip("torch")
    from mistralrs.backends import torch_cpu_kernels, torch_cpu_linear

    monkeypatch.setattr(torch_cpu_linear, "NATIVE_BF16", False)
    monkeypatch.setattr(torch_cpu_kernels, "available", lambda: False)  # torch's kernels, not ours
    o = _torch_ops()
    w = torch.from_numpy(rand(48, 64, seed=1) / 8).bfloat16()
    x = torch.from_numpy(rand(rows, 64)).bfloat16()
    b = torch.from_numpy(rand(48, seed=2)).bfloat16() if bias else None
    prepared = torch_cpu_linear.prepare(w, compiled=False)
    assert isinstance(prepared, torch_cpu_linear.UpcastingBf16Weight)
    assert prepared.weight.dtype == torch.bfloat16 and prepared.weight.data_ptr() != w.data_ptr()
    y = o.linear(x, prepared, b)
    assert y.dtype == torch.bfloat16 and y.shape == (rows, 48)
    expected = x.double().numpy() @ w.double().numpy().T + (b.double().numpy() if bias else 0)
    assert_close(y.float().numpy(), expected, BF16_TOL)


def test_embedding(pair):
    ids = np.array([[3, 0, 7], [7, 7, 1]], dtype=np.int32)
    compare(pair, lambda o, i, t: o.embedding(i, t), ids, rand(10, 6), rel=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rms_norm(pair, dtype):
    x, w = rand(2, 3, 96) * 3, rand(96, seed=1)
    compare(pair, lambda o, x, w: o.rms_norm(x, w, 1e-6), x, w, dtype=dtype)


def _inv_freq(rot_dim: int, base: float = 10000.0) -> np.ndarray:
    return (1.0 / base ** (np.arange(0, rot_dim, 2) / rot_dim)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("offset", [0, 7])
@pytest.mark.parametrize("rot_dim", [32, 16], ids=["full", "partial"])
@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_rope(pair, dtype, offset, rot_dim, scale):
    x = rand(2, 3, 5, 32)
    inv = _inv_freq(rot_dim)

    def run(o, x):
        return o.rope(x, offset, o.asarray(inv, "float32"), scale)

    compare(pair, run, x, dtype=dtype)


def test_rope_matches_numpy(ops):
    x, inv, offset = rand(1, 2, 4, 8), _inv_freq(6), 3
    angles = np.outer(np.arange(offset, offset + 4), inv)
    cos, sin = np.cos(angles), np.sin(angles)
    x1, x2, rest = x[..., :3], x[..., 3:6], x[..., 6:]
    expected = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
    out = ops.to_numpy(ops.rope(ops.asarray(x), offset, ops.asarray(inv, "float32")))
    assert_close(out, expected, F32_TOL)


def numpy_causal_mask(length: int, total: int, window: int | None) -> np.ndarray:
    mask = np.zeros((length, total), dtype=bool)
    for i in range(length):
        pos = total - length + i
        for j in range(total):
            mask[i, j] = j <= pos and (window is None or j > pos - window)
    return mask


def numpy_attention(q, k, v, scale, mask):
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = (q @ k.swapaxes(-1, -2)).astype(np.float64) * scale
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    return (p / p.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("length,total,window", [(4, 4, None), (3, 9, None), (9, 9, 4), (3, 9, 4), (1, 6, 2)])
def test_causal_mask(ops, length, total, window):
    mask = ops.to_numpy(ops.causal_mask(length, total, window))
    assert mask.dtype == bool
    assert np.array_equal(mask, numpy_causal_mask(length, total, window))


ATTENTION_CASES = {
    "no-mask": (5, 5, "none"),
    "decode-causal": (1, 12, "causal"),
    "causal": (6, 6, "causal"),
    "chunked-causal": (4, 11, "causal"),  # a prefill chunk on top of a cache
    "sliding-window": (4, 11, "window"),
    "batched-mask": (4, 11, "batched"),  # a (B, 1, L, S) mask, e.g. left padding
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
@pytest.mark.parametrize("mlx_path", ["cpu", "fused"])
def test_attention_gqa(pair, dtype, case, mlx_path):
    length, total, kind = ATTENTION_CASES[case]
    if mlx_path == "fused":
        # The Metal branch (mx.fast.scaled_dot_product_attention), which MLX also
        # runs on the CPU: so the GPU code path is checked here too.
        fused = _mlx_ops()
        fused.device = "metal"
        pair = (pair[0], fused)
    q, k, v = rand(2, 8, length, 16), rand(2, 2, total, 16, seed=1), rand(2, 2, total, 16, seed=2)
    scale = 16**-0.5
    batched = numpy_causal_mask(length, total, None)[None, None].repeat(2, axis=0)
    batched[1, :, :, :3] = False  # the second sequence is left-padded by 3

    def mask_for(o):
        if kind == "none":
            return None
        if kind == "causal":
            return "causal"
        if kind == "window":
            return o.causal_mask(length, total, 3)
        return o.asarray(batched)

    def run(o, q, k, v):
        return o.attention(q, k, v, scale, mask_for(o))

    compare(pair, run, q, k, v, dtype=dtype)

    if dtype == "float32":  # both backends against the definition
        np_mask = {
            "none": None,
            "causal": numpy_causal_mask(length, total, None),
            "window": numpy_causal_mask(length, total, 3),
            "batched": batched,
        }[kind]
        expected = numpy_attention(q, k, v, scale, np_mask)
        for out in both(pair, run, q, k, v):
            assert_close(out, expected, F32_TOL)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("fn", ["silu", "gelu", "gelu_tanh", "tanh"])
def test_activations(pair, dtype, fn):
    x = rand(4, 33) * 4
    compare(pair, lambda o, x: getattr(o, fn)(x), x, dtype=dtype)


# ---- sampling ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_softmax_and_log_softmax(pair, dtype):
    x = rand(3, 50) * 5
    compare(pair, lambda o, x: o.softmax(x), x, dtype=dtype)
    compare(pair, lambda o, x: o.log_softmax(x), x, dtype=dtype)
    compare(pair, lambda o, x: o.softmax(x, axis=0), x, dtype=dtype)


def test_argmax_topk_sort(pair):
    # A permutation: no ties, so the indices are unique too.
    x = np.stack([np.random.default_rng(s).permutation(40) for s in range(3)]).astype(np.float32)
    ref, out = both(pair, lambda o, x: o.argmax(x), x)
    assert np.array_equal(out, ref) and np.array_equal(ref, x.argmax(-1))
    ref, out = both(pair, lambda o, x: o.argmax(x, axis=0), x)
    assert np.array_equal(out, ref)
    for k in (1, 5, 40):
        ref, out = both(pair, lambda o, x, k=k: o.topk(x, k), x)
        assert np.array_equal(out[0], ref[0]) and np.array_equal(out[1], ref[1])
        assert np.array_equal(ref[0], -np.sort(-x, axis=-1)[:, :k])
    ref, out = both(pair, lambda o, x: o.sort_descending(x), x)
    assert np.array_equal(out[0], ref[0]) and np.array_equal(out[1], ref[1])
    assert np.array_equal(ref[1], np.argsort(-x, axis=-1))


def test_cumsum_where(pair):
    x = rand(3, 20)
    compare(pair, lambda o, x: o.cumsum(x), x)
    compare(pair, lambda o, x: o.cumsum(x, axis=0), x)
    cond = x > 0
    compare(pair, lambda o, c, x: o.where(c, x, -x), cond, x, rel=0)
    ref, out = both(pair, lambda o, c, x: o.where(c, x, float("-inf")), cond, x)
    assert np.array_equal(out, ref) and np.isneginf(out[~cond]).all()


def test_take(pair):
    x = rand(3, 10)
    rows = np.array([[2, 9], [0, 0], [5, 1]], dtype=np.int64)
    ref, out = both(pair, lambda o, x, i: o.take(x, i), x, rows)
    assert np.array_equal(out, ref) and np.array_equal(ref, np.take_along_axis(x, rows, -1))
    flat = np.array([4, 1, 4], dtype=np.int64)
    ref, out = both(pair, lambda o, x, i: o.take(x, i, axis=-1), x, flat)
    assert np.array_equal(out, ref) and np.array_equal(ref, x[:, flat])
    ref, out = both(pair, lambda o, x, i: o.take(x, i, axis=0), x, np.array([2, 0], dtype=np.int64))
    assert np.array_equal(out, ref) and np.array_equal(ref, x[[2, 0]])


def test_scatter_returns_a_copy(ops):
    a, v = rand(2, 6), rand(2, 2, seed=1)
    x = ops.asarray(a)
    out = ops.scatter(x, ops.asarray(np.array([4, 1], dtype=np.int64)), ops.asarray(v))
    expected = a.copy()
    expected[:, [4, 1]] = v
    assert np.array_equal(ops.to_numpy(out), expected)
    assert np.array_equal(ops.to_numpy(x), a)  # the input is untouched


def test_scatter_matches_across_backends(pair):
    idx = np.array([0, 5], dtype=np.int64)
    ref, out = both(pair, lambda o, x, i, v: o.scatter(x, i, v), rand(3, 7), idx, rand(3, 2, seed=1))
    assert np.array_equal(out, ref)


def test_rng_is_deterministic_per_seed(ops):
    def draws(seed):
        rng = ops.make_rng(seed)
        return [ops.to_numpy(ops.gumbel((4, 8), rng)) for _ in range(3)]

    first, again, other = draws(123), draws(123), draws(124)
    assert ops.dtype_name(ops.gumbel((2,), ops.make_rng(0))) == "float32"
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # the stream advances
    assert not np.array_equal(first[0], other[0])
    assert all(np.isfinite(d).all() for d in first)
    unseeded = ops.to_numpy(ops.gumbel((8,), ops.make_rng(None)))
    assert np.isfinite(unseeded).all()


def test_gumbel_max_samples_softmax(ops):
    logits = np.array([1.0, 0.0, -1.0, 2.0, 0.5], dtype=np.float32)
    p = np.exp(logits) / np.exp(logits).sum()
    n = 10_000
    noise = ops.gumbel((n, 5), ops.make_rng(7))
    samples = ops.to_numpy(ops.argmax(ops.asarray(np.tile(logits, (n, 1))) + noise))
    freq = np.bincount(samples.astype(np.int64), minlength=5) / n
    # Five standard errors of a binomial proportion: a fixed seed, so no flakes,
    # and a generous bound that still catches a wrong distribution.
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n)), (freq, p)


# ---- speed -------------------------------------------------------------------


def test_compile_threads_memory(ops):
    # Nothing to compile until the loader turns compile_steps on (tests/test_compile.py).
    assert ops.compile(lambda x: x * 2 + 1) is None
    ops.set_threads(None)  # the backend's own default
    used = ops.memory_bytes()
    assert used is None or (isinstance(used, int) and used >= 0)


def _mlx_cpu_ops_and_weights(dtype: str, seed: int, out_features: int):
    """MLX CPU ops plus a dense (checkpoint-layout), bias and 4-bit AFQ weight of 64 inputs."""
    from mistralrs.quant.afq import quantize as afq_quantize

    ops = _mlx_ops()
    if ops.device != "cpu":
        pytest.skip("only MLX's CPU backend splits products across streams")
    rng = np.random.default_rng(seed)
    dense = ops.asarray(rng.standard_normal((out_features, 64)), dtype)
    bias = ops.asarray(rng.standard_normal(out_features), dtype)
    quantized = ops.prepare_quantized_linear(
        afq_quantize(rng.standard_normal((out_features, 64)).astype(np.float32), 4, 32))
    return ops, rng, dense, bias, quantized


def _same_bits_on_two_streams(ops, outputs) -> None:
    """outputs() on one stream and on two, here and on another thread (MLX streams belong to the
    thread that made them, as in the server's scheduler thread)."""
    import threading

    import mlx.core as mx

    ops.stream_count = 1
    whole = outputs()
    ops.stream_count = 2
    split = outputs()
    mx.eval(whole, split)  # and with them the inputs, which the other thread cannot evaluate
    elsewhere = []
    worker = threading.Thread(target=lambda: elsewhere.extend(mx.eval(y) or y for y in outputs()))
    worker.start()
    worker.join()
    for a, b, c in zip(whole, split, elsewhere, strict=True):
        assert a.shape == b.shape and mx.array_equal(a, b).item() and mx.array_equal(a, c).item()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mlx_prompt_rows_split_across_cpu_streams_keep_every_bit(dtype):
    """On the CPU, MLX runs prompt products and attention with their rows split across one
    stream per core (MlxOps._across_streams); each row is computed as it would be unsplit."""
    ops, rng, dense, bias, quantized = _mlx_cpu_ops_and_weights(dtype, seed=0, out_features=96)
    dense = ops.prepare_linear(dense)
    x = ops.asarray(rng.standard_normal((1, 40, 64)), dtype)
    q = ops.asarray(rng.standard_normal((1, 4, 40, 16)), dtype)
    k, v = (ops.asarray(rng.standard_normal((1, 2, 50, 16)), dtype) for _ in range(2))
    _same_bits_on_two_streams(ops, lambda: [ops.linear(x, dense), ops.linear(x, dense, bias),
                                            ops.linear(x, quantized), ops.attention(q, k, v, 0.25, "causal")])

    seen = []
    ops.stream_count = 2
    ops._across_streams(lambda rows: seen.append(rows.shape) or rows, x)
    assert seen == [(1, 20, 64), (1, 20, 64)]
    seen.clear()
    ops._across_streams(lambda rows: seen.append(rows.shape) or rows, x[:, :31])  # < 16 rows each
    assert seen == [(1, 31, 64)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mlx_one_row_products_split_by_output_features_keep_every_bit(dtype):
    """Decode products have one row: MLX's CPU path splits their output features across the
    streams instead, for checkpoint-layout and quantized weights."""
    ops, rng, dense, bias, quantized = _mlx_cpu_ops_and_weights(dtype, seed=1, out_features=600)
    x = ops.asarray(rng.standard_normal((1, 1, 64)), dtype)
    small = ops.asarray(rng.standard_normal((300, 64)), dtype)  # too few outputs to split
    _same_bits_on_two_streams(ops, lambda: [ops.linear(x, dense), ops.linear(x, dense, bias),
                                            ops.linear(x, quantized), ops.linear(x, small)])
    assert ops._split_outputs(x, dense) and ops._split_outputs(x, quantized) and not ops._split_outputs(x, small)
