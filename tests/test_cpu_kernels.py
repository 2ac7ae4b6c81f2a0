"""Our decode kernels (backends/csrc/cpu_matvec.cpp, cpu_decode_attention.cpp), against float64 references.

They run where they are built (x86-64 with AVX2 and a C++ compiler); on CPUs with
native bfloat16 they are forced on here, since the tests check the arithmetic.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch_env

from mistralrs.backends import torch_cpu_kernels  # noqa: E402
from mistralrs.backends.torch_cpu_linear import NATIVE_BF16, STREAM_UNTIL_ROWS, StreamingCpuWeight  # noqa: E402
from mistralrs.backends.torch_quant import Int8Weight, StreamingQuantWeight, prepare_cpu  # noqa: E402
from mistralrs.errors import UserError  # noqa: E402
from mistralrs.quant import ggml_blocks  # noqa: E402
from mistralrs.quant.ggml_affine import AffineGroups  # noqa: E402
from mistralrs.quant.qtensor import GgmlTensor  # noqa: E402


@pytest.fixture(autouse=True)
def kernels(monkeypatch):
    monkeypatch.setenv(torch_cpu_kernels.ENV, "1")
    torch_cpu_kernels.available.cache_clear()
    if torch_cpu_kernels.unavailable_reason() is not None or not torch_cpu_kernels.available():
        pytest.skip(f"the CPU kernels do not run here: {torch_cpu_kernels.unavailable_reason()}")
    yield
    monkeypatch.delenv(torch_cpu_kernels.ENV)
    torch_cpu_kernels.available.cache_clear()


def _relative_error(got: torch.Tensor, expected: np.ndarray) -> float:
    return float(np.abs(got.double().numpy() - expected).max() / np.abs(expected).max())


def _bound(input_dtype: str, rows: int, exact: float, prompt_in_bf16: bool = True) -> float:
    """bfloat16 outputs round to 8 bits; so do prompt products of bfloat16 or unpacked quantized
    weights on CPUs with native bfloat16, which run them in bfloat16 (torch_cpu_linear.PROMPT_DTYPE)."""
    if input_dtype == "bfloat16" or (rows >= STREAM_UNTIL_ROWS and NATIVE_BF16 and prompt_in_bf16):
        return 2**-7
    return exact


# Rows 1-15 run the kernels, 16 and more a dense matmul of the unpacked weight.
@pytest.mark.parametrize("rows", [1, 3, 15, 16, 40])
@pytest.mark.parametrize("weight_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("input_dtype", ["float32", "bfloat16"])
def test_dense_weights(rows, weight_dtype, input_dtype):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(72, 200, generator=g) / 8).to(getattr(torch, weight_dtype))
    x = torch.randn(2, rows, 200, generator=g).to(getattr(torch, input_dtype))
    bias = torch.randn(72, generator=g).to(x.dtype)
    prepared = StreamingCpuWeight(w)
    assert torch.equal(prepared.dense(), w)
    y = prepared(x, bias)
    assert y.dtype == x.dtype and y.shape == (2, rows, 72)
    expected = x.double().numpy() @ w.double().numpy().T + bias.double().numpy()
    assert _relative_error(y, expected) < _bound(input_dtype, 2 * rows, 1e-5, prompt_in_bf16=weight_dtype == "bfloat16")


@pytest.mark.parametrize("out_features", [4, 20, 44, 72, 200])
@pytest.mark.parametrize("weight_dtype", ["float32", "bfloat16"])
def test_one_row_products_split_every_way_into_streams(out_features, weight_dtype):
    """Decode reads a thread's blocks of 4 rows as several streams, the leftovers one by one:
    1 to 50 blocks cover both, on one thread and on two."""
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(out_features, 256, generator=g) / 8).to(getattr(torch, weight_dtype))
    x = torch.randn(1, 256, generator=g)
    y = StreamingCpuWeight(w)(x, None)
    assert _relative_error(y, x.double().numpy() @ w.double().numpy().T) < 1e-5


@pytest.fixture(params=["avx2", "avx512"])
def vector_width(request):
    """Runs a test with 8-bit one-row products on each instruction set this CPU has."""
    if request.param == "avx512" and not torch_cpu_kernels.use_avx512(True):
        pytest.skip("this CPU has no AVX-512 VNNI")
    if request.param == "avx2":
        torch_cpu_kernels.use_avx512(False)
    yield request.param
    torch_cpu_kernels.use_avx512(True)


def _groups(bits: int, group_size: int, rows: int = 20, cols: int = 384, seed: int = 0) -> AffineGroups:
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 2**bits, (rows, cols)).astype(np.uint8)
    scales = (rng.random((rows, cols // group_size)) * 0.01 + 1e-3).astype(np.float32)
    biases = (-rng.random((rows, cols // group_size)) * 0.05 * 2**bits / 16).astype(np.float32)
    return AffineGroups(bits, group_size, q, scales, biases)


def _f16_dequantized(groups: AffineGroups) -> np.ndarray:
    """The weight the kernels hold: exact values, scales and biases rounded to float16."""
    rows, cols = groups.q.shape
    s = groups.scales.astype(np.float16).astype(np.float32)[..., None]
    b = groups.biases.astype(np.float16).astype(np.float32)[..., None]
    return (groups.q.reshape(rows, -1, groups.group_size).astype(np.float32) * s + b).reshape(rows, cols)


@pytest.mark.parametrize("rows", [1, 5, 16, 40])
@pytest.mark.parametrize(("bits", "group_size"), [(4, 32), (4, 64), (4, 128), (2, 64), (5, 32), (6, 64), (8, 32),
                                                  (8, 128)])
@pytest.mark.parametrize("input_dtype", ["float32", "bfloat16"])
def test_quantized_weights(rows, bits, group_size, input_dtype, vector_width):
    groups = _groups(bits, group_size)
    weight = StreamingQuantWeight.from_groups(groups)
    w = _f16_dequantized(groups)
    np.testing.assert_array_equal(weight.dense(torch.float32).numpy(), w)
    x = torch.randn(rows, 384, generator=torch.Generator().manual_seed(1)).to(getattr(torch, input_dtype))
    y = weight(x, None)
    assert y.dtype == x.dtype and y.shape == (rows, 20)
    # The kernels round the activations to int16 per 32 values (~3e-5 of their largest).
    assert _relative_error(y, x.double().numpy() @ w.astype(np.float64).T) < _bound(input_dtype, rows, 2e-4)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
def test_unpacked_weights_are_rounded_once_to_bfloat16(bits, symmetric):
    """Prompt chunks unpack the weight to bfloat16: the nearest bfloat16 to each exact value. Symmetric
    formats (bias -scale * 2^(bits-1), as Q8_0 and Q4_0 become) cancel most of scale * q, where
    rounding the parts separately moved weights by more than a quantization step."""
    groups = _groups(bits, 32)
    if symmetric:
        groups = AffineGroups(bits, 32, groups.q, groups.scales, -groups.scales * 2 ** (bits - 1))
    weight = StreamingQuantWeight.from_groups(groups)
    expected = torch.from_numpy(_f16_dequantized(groups)).to(torch.bfloat16)
    assert torch.equal(weight.dense(torch.bfloat16), expected)


def _needs_amx():
    if not torch_cpu_kernels.amx_ready():
        pytest.skip("this CPU has no AMX-BF16")


# Prompt rows: one tile, tiles and a remainder, several blocks of 32; groups of 32 and whole rows.
@pytest.mark.parametrize("rows", [16, 37, 96])
@pytest.mark.parametrize(("out_features", "in_features", "group_size"), [(32, 64, 32), (96, 320, 32), (64, 256, 256)])
def test_amx_prompt_products_sum_bfloat16_products_in_float32(rows, out_features, in_features, group_size):
    _needs_amx()
    groups = _groups(8, group_size, rows=out_features, cols=in_features, seed=rows)
    weight = StreamingQuantWeight.from_groups(groups)
    assert weight.amx
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(3))
    y = weight(x, None)
    assert y.dtype == torch.float32 and y.shape == (rows, out_features)
    # Activations and weights each as two bfloat16 parts (16 significant bits), sums in float32.
    w = _f16_dequantized(groups).astype(np.float64)
    assert _relative_error(y, x.double().numpy() @ w.T) < 2e-5


def test_amx_takes_only_whole_tiles_and_float32_rows():
    _needs_amx()
    assert not StreamingQuantWeight.from_groups(_groups(8, 32, rows=20, cols=64)).amx  # 20 output rows
    assert not StreamingQuantWeight.from_groups(_groups(4, 32, rows=32, cols=64)).amx  # 4-bit: bf16 products
    weight = StreamingQuantWeight.from_groups(_groups(8, 32, rows=32, cols=64))
    x = torch.randn(16, 64)
    for bad, message in ((x.bfloat16(), "float32"), (x[:, :32].contiguous(), "float32"), (x.t(), "contiguous")):
        with pytest.raises(RuntimeError, match=message):
            torch_cpu_kernels.prompt_product_q8(bad, weight.values, weight.scale_bias, 32, 64)
    with pytest.raises(RuntimeError, match="multiples of 32"):
        torch_cpu_kernels.prompt_product_q8(torch.randn(16, 48), weight.values[:, :48].contiguous(),
                                            weight.scale_bias, 16, 48)


def test_compiled_code_calls_the_amx_prompt_product():
    _needs_amx()
    weight = StreamingQuantWeight.from_groups(_groups(8, 32, rows=64, cols=128))
    x = torch.randn(40, 128)
    compiled = torch.compile(lambda rows: weight(rows, None), fullgraph=True)
    torch.testing.assert_close(compiled(x), weight(x, None), rtol=0, atol=0)


@pytest.mark.parametrize("out_features", [4, 20, 44, 72, 200])
@pytest.mark.parametrize("bits", [4, 8])
def test_one_row_quantized_products_split_every_way_into_streams(out_features, bits, vector_width):
    groups = _groups(bits, 32, rows=out_features, cols=256, seed=out_features)
    x = torch.randn(1, 256, generator=torch.Generator().manual_seed(2))
    y = StreamingQuantWeight.from_groups(groups)(x, None)
    assert _relative_error(y, x.double().numpy() @ _f16_dequantized(groups).astype(np.float64).T) < 2e-4


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("group_size", [32, 128])
def test_8_bit_products_are_the_same_on_avx512_as_on_avx2(rows, group_size):
    """The AVX-512 path forms the same integer sums and adds them in the same order."""
    if not torch_cpu_kernels.use_avx512(True):
        pytest.skip("this CPU has no AVX-512 VNNI")
    weight = StreamingQuantWeight.from_groups(_groups(8, group_size, rows=200, cols=512, seed=4))
    x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(3))
    wide = weight(x, None)
    torch_cpu_kernels.use_avx512(False)
    try:
        narrow = weight(x, None)
    finally:
        torch_cpu_kernels.use_avx512(True)
    torch.testing.assert_close(wide, narrow, rtol=0, atol=0)


def test_ggml_formats_stream_through_the_kernels():
    w = (np.random.default_rng(0).standard_normal((64, 512)) * 0.05).astype(np.float32)
    for kind in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K"):
        q = GgmlTensor(kind, w.shape, ggml_blocks.quantize(w, kind))
        prepared = prepare_cpu(q)
        assert isinstance(prepared, StreamingQuantWeight), kind
        x = torch.randn(1, 512, generator=torch.Generator().manual_seed(2))
        assert _relative_error(prepared(x, None), x.double().numpy() @ q.dequantize().astype(np.float64).T) < 1e-3


def test_scales_beyond_float16_keep_torchs_kernels():
    groups = _groups(4, 32)
    huge = AffineGroups(4, 32, groups.q, groups.scales * 1e8, groups.biases)  # beyond 65504
    assert StreamingQuantWeight.from_groups(huge) is None
    tiny_next_to_large = groups.scales.copy()
    tiny_next_to_large[0, 0] = 1e-7  # subnormal in float16, but next to the largest its error is negligible
    tiny_next_to_large[1, 0] = 10.0
    assert StreamingQuantWeight.from_groups(AffineGroups(4, 32, groups.q, tiny_next_to_large, groups.biases)) is not None


def test_int8_tables_stream_and_still_look_up_rows():
    w = (np.random.default_rng(3).standard_normal((96, 128)) * 0.05).astype(np.float32)
    q = GgmlTensor("Q6_K", (96, 256), ggml_blocks.quantize(np.tile(w, 2), "Q6_K"))
    streaming = Int8Weight(q)
    assert streaming.streaming is not None and streaming.values is None
    ids = torch.tensor([[0, 5, 95], [7, 7, 1]])
    rows = streaming.rows(ids)
    dequantized = q.dequantize()
    assert rows.shape == (2, 3, 256)
    assert np.abs(rows.float().numpy() - dequantized[ids.numpy()]).max() <= np.abs(dequantized).max() / 100
    x = torch.randn(1, 256, generator=torch.Generator().manual_seed(4))
    assert _relative_error(streaming(x, None), x.double().numpy() @ dequantized.astype(np.float64).T) < 2e-2


def test_compiled_code_calls_the_kernels():
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(5))
    dense = StreamingCpuWeight(w)
    quantized = StreamingQuantWeight.from_groups(_groups(4, 32, rows=64, cols=128))

    def step(x):
        return dense(x, None) + quantized(x, None)

    x = torch.randn(1, 128, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(torch.compile(step, fullgraph=True)(x), step(x), rtol=1e-5, atol=1e-5)


def test_the_operators_reject_wrong_shapes():
    w = torch_cpu_kernels.repack_dense(torch.randn(64, 128))
    with pytest.raises(RuntimeError, match="activations must be contiguous"):
        torch_cpu_kernels.matvec_dense(torch.randn(1, 96), w)
    with pytest.raises(RuntimeError, match="multiple of"):
        torch_cpu_kernels.matvec_dense(torch.randn(1, 128), torch.randn(6, 128))
    groups = _groups(4, 32, rows=8, cols=128)
    values, scale_bias = torch_cpu_kernels.repack_quantized(groups.q, groups.scales, groups.biases, 32, 4)
    with pytest.raises(RuntimeError, match="float16"):
        torch_cpu_kernels.matvec_quantized(torch.randn(1, 128), values, scale_bias.float(), 32, 128, 4)


def _attention_reference(q, k, v, scale):
    scores = torch.einsum("bhgd,bhtd->bhgt", q.double().unflatten(1, (k.shape[1], -1)).squeeze(3), k.double()) * scale
    out = torch.einsum("bhgt,bhtd->bhgd", scores.softmax(-1), v.double())
    return out.flatten(1, 2).unsqueeze(2).numpy()


# Query heads per key head: 1 (no grouping), 3, 8 (the most one pass handles), 12 (two passes).
# Positions: fewer than a chunk, a serial amount, and enough to split across threads.
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (9, 3), (16, 2), (12, 1)])
@pytest.mark.parametrize("positions", [1, 7, 33, 301])
def test_decode_attention(heads, kv_heads, positions):
    g = torch.Generator().manual_seed(positions)
    # Views of a longer cache, as the KV cache hands them over: strides are not contiguous.
    cache_k = torch.randn(2, kv_heads, positions + 50, 64, generator=g) * 2
    cache_v = torch.randn(2, kv_heads, positions + 50, 64, generator=g)
    k, v = cache_k[:, :, 10:10 + positions], cache_v[:, :, 10:10 + positions]
    q = torch.randn(2, heads, 1, 64, generator=g)
    out = torch_cpu_kernels.decode_attention(q, k, v, 0.125)
    assert out.shape == (2, heads, 1, 64) and out.is_contiguous()
    assert _relative_error(out, _attention_reference(q, k, v, 0.125)) < 1e-5


def test_decode_attention_value_size_can_differ_and_scores_can_be_large():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 6, 1, 128, generator=g) * 30  # scores in the thousands: the max is subtracted first
    k, v = torch.randn(1, 2, 100, 128, generator=g), torch.randn(1, 2, 100, 40, generator=g)
    out = torch_cpu_kernels.decode_attention(q, k, v, 128**-0.5)
    assert out.shape == (1, 6, 1, 40)
    assert _relative_error(out, _attention_reference(q, k, v, 128**-0.5)) < 1e-5


def test_torch_ops_decode_uses_the_attention_kernel(monkeypatch):
    from mistralrs.backends.torch_ops import TorchOps

    ops = TorchOps(cpu=True)
    assert ops._decode_attention_kernel
    calls = []
    monkeypatch.setattr(torch_cpu_kernels, "decode_attention",
                        lambda *a: calls.append(a) or torch.ops.mistralrs_cpu.decode_attention(*a))
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(1, 6, 1, 64, generator=g), torch.randn(1, 2, 20, 64, generator=g), torch.randn(1, 2, 20, 64, generator=g)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.125, enable_gqa=True)
    torch.testing.assert_close(ops.attention(q, k, v, 0.125, None), expected, rtol=1e-5, atol=1e-6)
    assert len(calls) == 1
    # Prompts (several query rows, a causal mask) and bfloat16 queries over a bfloat16 cache keep SDPA.
    ops.attention(torch.randn(1, 6, 3, 64), torch.randn(1, 2, 3, 64), torch.randn(1, 2, 3, 64), 0.125, "causal")
    ops.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.125, None)
    assert len(calls) == 1


def test_compiled_code_calls_the_attention_kernel():
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(1, 9, 1, 64, generator=g), torch.randn(1, 3, 40, 64, generator=g), torch.randn(1, 3, 40, 64, generator=g)

    def step(q, k, v):
        return torch_cpu_kernels.decode_attention(q * 2, k, v, 0.125) + 1

    torch.testing.assert_close(torch.compile(step, fullgraph=True)(q, k, v), step(q, k, v), rtol=1e-6, atol=1e-6)


def test_decode_attention_rejects_what_it_cannot_take():
    q, k, v = torch.randn(1, 6, 1, 64), torch.randn(1, 4, 9, 64), torch.randn(1, 4, 9, 64)
    with pytest.raises(RuntimeError, match="multiple of the key heads"):
        torch_cpu_kernels.decode_attention(q, k, v, 0.125)
    with pytest.raises(RuntimeError, match="float32"):
        torch_cpu_kernels.decode_attention(q.bfloat16(), k[:, :2], v[:, :2], 0.125)
    with pytest.raises(RuntimeError, match=r"q \(B, H, 1, D\)"):
        torch_cpu_kernels.decode_attention(torch.randn(1, 6, 2, 64), k[:, :2], v[:, :2], 0.125)
    with pytest.raises(RuntimeError, match="multiples of 8"):
        torch_cpu_kernels.decode_attention(q[..., :60], k[:, :2, :, :60], v[:, :2, :, :60], 0.125)
    with pytest.raises(RuntimeError, match="at least one key"):
        torch_cpu_kernels.decode_attention(q, k[:, :2, :0], v[:, :2, :0], 0.125)
    assert not torch_cpu_kernels.decode_attention_fits(q, k.transpose(2, 3), v)


def test_the_setting_is_validated(monkeypatch):
    monkeypatch.setenv(torch_cpu_kernels.ENV, "maybe")
    with pytest.raises(UserError, match="MISTRALRS_CPU_KERNELS='maybe' is not understood.*1.*0"):
        torch_cpu_kernels.unavailable_reason()
    monkeypatch.setenv(torch_cpu_kernels.ENV, "0")
    assert torch_cpu_kernels.unavailable_reason() == f"{torch_cpu_kernels.ENV}=0"
