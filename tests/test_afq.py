"""AFQ (MLX affine) quantization in numpy against its definition and against `mlx.core`.

The MLX comparisons run for real in the mlx tox environment and are skipped where MLX is
not installed; the properties below them run everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from mistralrs.errors import UserError
from mistralrs.quant import afq
from mistralrs.quant.qtensor import AfqTensor

BITS = afq.BITS
GROUPS = afq.GROUP_SIZES


def sample(rows: int = 8, cols: int = 256, seed: int = 0) -> np.ndarray:
    """Gaussian weights plus the groups that exercise the edge rule: all zero, constant,
    one dominant negative outlier, an exact ramp, and a group straddling zero."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    w[0, :32] = 0.0
    w[1, :32] = 0.5
    w[2, 5] = -3.0
    w[3, :128] = np.linspace(-1, 1, 128, dtype=np.float32)
    w[4, 32:64] = np.linspace(-0.25, 1.0, 32, dtype=np.float32)
    return w


@pytest.mark.parametrize("bits", BITS)
def test_round_trip_error_and_edges(bits):
    w = sample()
    t = afq.quantize(w, bits, 32)
    assert isinstance(t, AfqTensor) and t.weight.dtype == np.uint32
    assert t.weight.shape == (8, 256 * bits // 32) and t.scales.shape == (8, 8) == t.biases.shape
    back = afq.dequantize(t)
    step = np.repeat(np.abs(t.scales), 32, axis=1)
    # rounding is half a step; the edge rule may shrink the scale so that the far end of
    # the range clips, by at most one step
    assert np.all(np.abs(back - w) <= step + 1e-6)
    assert np.mean(np.abs(back - w) <= step / 2 + 1e-6) > 0.97
    assert np.all(back[0, :32] == 0.0)  # an all-zero group stays exactly zero
    assert back[2, 5] == -3.0  # the extreme of larger magnitude is the bias itself
    # zero inside the group's range is representable: the bias is a whole number of steps
    q0 = t.biases[4, 1] / t.scales[4, 1]
    assert q0 == np.rint(q0)


def test_codes_in_range_and_bad_params():
    t = afq.quantize(sample(), 3, 64)
    assert afq.codes(t).max() <= 7
    with pytest.raises(UserError, match="bits"):
        afq.quantize(sample(), 7, 64)
    with pytest.raises(UserError, match="group size"):
        afq.quantize(sample(), 4, 16)
    with pytest.raises(UserError, match="multiple of 128"):
        afq.quantize(np.zeros((2, 96), np.float32), 4, 128)
    with pytest.raises(UserError, match="NaN"):
        afq.quantize(np.full((1, 32), np.nan, np.float32), 4, 32)


def test_bfloat16_rounding_matches_definition():
    above_tie = np.nextafter(np.float32(1.00390625), np.float32(2))
    x = np.array([1.0, 1.00390625, above_tie, 1.01171875, -2.5e-8, 3.0e38], np.float32)
    r = afq.round_to_bfloat16(x)
    assert np.all(r.view(np.uint32) & 0xFFFF == 0)
    assert r[0] == 1.0 and r[1] == 1.0  # tie -> even
    assert r[2] == 1.0078125 and r[3] == 1.015625  # above tie -> up; tie -> even (up)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUPS)
def test_bit_exact_with_mlx_float32(bits, group_size):
    mx = pytest.importorskip("mlx.core")
    w = sample(seed=bits * group_size)
    wq, scales, biases = mx.quantize(mx.array(w), group_size=group_size, bits=bits)
    t = afq.quantize(w, bits, group_size)
    assert np.array_equal(np.array(wq), t.weight)
    assert np.array_equal(np.array(scales), t.scales)
    assert np.array_equal(np.array(biases), t.biases)
    ref = np.array(mx.dequantize(wq, scales, biases, group_size=group_size, bits=bits))
    assert np.array_equal(ref, afq.dequantize(t))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_bit_exact_with_mlx_half_inputs(dtype, bits):
    mx = pytest.importorskip("mlx.core")
    w = mx.array(sample(seed=bits)).astype(getattr(mx, dtype))
    as_f32 = np.array(w.astype(mx.float32))
    wq, scales, biases = mx.quantize(w, group_size=64, bits=bits)
    t = afq.quantize(as_f32, bits, 64, dtype=dtype)
    assert np.array_equal(np.array(wq), t.weight)
    assert np.array_equal(np.array(scales.astype(mx.float32)), t.scales)
    assert np.array_equal(np.array(biases.astype(mx.float32)), t.biases)
    ref = mx.dequantize(wq, scales, biases, group_size=64, bits=bits).astype(mx.float32)
    assert np.array_equal(np.array(ref), afq.dequantize(t, dtype))


def test_bfloat16_rounding_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(4096) * np.exp(rng.uniform(-30, 30, 4096))).astype(np.float32)
    ref = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    assert np.array_equal(afq.round_to_bfloat16(x), ref)
