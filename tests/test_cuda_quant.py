"""The CUDA path for quantized weights (backends/torch_cuda_quant.py), run through Triton's
interpreter on the CPU (conftest sets TRITON_INTERPRET=1): the kernels' indexing, packing,
masking and per-group sums are the ones a GPU compiles. On a machine with a CUDA GPU,
`TRITON_INTERPRET=0 pytest tests/test_cuda_quant.py` runs the same tests on the compiled
kernels instead. How fast they are on a GPU is not measured here.

References: each format's own numpy dequantization (bit-exact with ggml, see
test_ggml_blocks.py) and float64 products of the weight the kernels hold.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton", reason="the CUDA kernels are Triton kernels")

from mistralrs.backends.torch_cuda_quant import KERNEL_UNTIL_ROWS, CudaQuantWeight  # noqa: E402
from mistralrs.quant import afq, ggml_blocks  # noqa: E402
from mistralrs.quant.ggml_affine import affine_groups, sixteen_wide_groups  # noqa: E402
from mistralrs.quant.qtensor import GgmlTensor  # noqa: E402
from mistralrs.quant.resident import resident_bits  # noqa: E402

KINDS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"]
pytestmark = pytest.mark.torch_env  # torch's CUDA path: runs in the torch environment
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") != "0"
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("compiled Triton kernels need a CUDA GPU (TRITON_INTERPRET=1 runs them on the CPU)",
                allow_module_level=True)
DEVICE = torch.device("cpu" if INTERPRETED else "cuda")


def _activations(shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32)).to(DEVICE, dtype)


def _float64_product(x: torch.Tensor, weight: np.ndarray) -> torch.Tensor:
    return x.cpu().double() @ torch.from_numpy(weight).double().T


def _ggml(kind: str, rows: int = 40, cols: int = 512, seed: int = 0) -> GgmlTensor:
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    return GgmlTensor(kind, (rows, cols), ggml_blocks.quantize(w, kind))


def _groups(q):
    return affine_groups(q) or sixteen_wide_groups(q)


def _terms(g) -> np.ndarray:
    """|scale * q| + |bias| per weight: what a relative rounding of the scale or bias scales with."""
    terms = np.abs(g.q.reshape(*g.scales.shape, -1) * g.scales[..., None]) + np.abs(g.biases[..., None])
    return terms.reshape(g.q.shape)


@pytest.mark.parametrize("kind", KINDS)
def test_sixteen_and_thirty_two_wide_views_reproduce_ggmls_values(kind):
    q = _ggml(kind)
    g = _groups(q)
    assert g.group_size == (16 if kind in ("Q2_K", "Q3_K", "Q6_K") else 32)
    # ggml computes scale * (q - c) where the affine form adds scale * q and -scale * c: a float32 rounding apart.
    assert np.all(np.abs(g.dequantize() - q.dequantize()) <= _terms(g) * 2.0**-23 * 2)


@pytest.mark.parametrize("kind", KINDS)
def test_dequantized_weight_is_the_formats_own_up_to_float16_scales(kind):
    q = _ggml(kind)
    weight = CudaQuantWeight.from_quantized(q, DEVICE)
    got = weight.dense(torch.float32).cpu().numpy()
    reference = q.dequantize()
    if kind in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1"):  # float16 scales already: exact
        np.testing.assert_array_equal(got, reference)
    else:  # each scale and bias rounded to float16: at most 2**-11 of each term
        assert np.all(np.abs(got - reference) <= _terms(_groups(q)) * 2.0**-11 * 1.001 + 1e-7)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [1, 3, KERNEL_UNTIL_ROWS, KERNEL_UNTIL_ROWS + 1])
def test_products_match_float64_products_of_the_held_weight(kind, rows):
    q = _ggml(kind)
    weight = CudaQuantWeight.from_quantized(q, DEVICE)
    x = _activations((rows, 512), 1)
    expected = _float64_product(x, weight.dense(torch.float32).cpu().numpy())
    got = weight.matmul(x).cpu().double()
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_afq_weights_run_exactly(bits, group_size):
    w = np.random.default_rng(bits).standard_normal((24, 384)).astype(np.float32)
    q = afq.quantize(w, bits, group_size, dtype="float16")  # an f16 model's AFQ: float16 scales and biases
    weight = CudaQuantWeight.from_quantized(q, DEVICE)
    assert weight.packed == (bits <= 4)
    x = _activations((2, 384), 2)
    expected = _float64_product(x, q.dequantize())
    # The held scales and biases are the model's own, so only the float32 sums differ from float64.
    assert torch.allclose(weight.matmul(x).cpu().double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("leading", [(1, 3), (2, 5)], ids=["decode-kernel", "dequantized"])
def test_shapes_off_the_kernel_blocks_are_masked(leading):
    """37 rows (not a multiple of a decode program's 8 or a dequantize tile's 16) and 96 columns
    (not a multiple of their 256 or 128), through both paths: 3 rows of activations run the
    decode kernel, 10 the dequantized product."""
    q = _ggml("Q4_0", rows=37, cols=96)
    weight = CudaQuantWeight.from_quantized(q, DEVICE)
    x = _activations((*leading, 96), 3)
    bias = torch.arange(37, dtype=torch.float32, device=DEVICE)
    got = weight(x, bias)
    expected = _float64_product(x, q.dequantize()) + bias.cpu().double()
    assert got.shape == (*leading, 37)
    assert torch.allclose(got.cpu().double(), expected, atol=1e-4)


def test_scales_beyond_float16_stay_float32():
    w = np.random.default_rng(5).standard_normal((16, 128)).astype(np.float32) * 1e6
    q = afq.quantize(w, 4, 32, dtype="float32")
    weight = CudaQuantWeight.from_quantized(q, DEVICE)
    assert weight.scales.dtype == torch.float32 and weight.biases.dtype == torch.float32
    x = _activations((1, 128), 6)
    expected = _float64_product(x, q.dequantize())
    assert torch.allclose(weight.matmul(x).cpu().double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_activations_sum_in_float32(dtype):
    q = _ggml("Q8_0")
    weight = CudaQuantWeight.from_quantized(q, DEVICE)
    x = _activations((1, 512), 4, dtype)
    got = weight.matmul(x)
    expected = _float64_product(x, q.dequantize())
    assert got.dtype == dtype
    # Only the output's rounding to `dtype`: float32 sums keep the rest.
    assert torch.allclose(got.cpu().double(), expected, rtol=2 * torch.finfo(dtype).eps, atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_the_tune_estimate_counts_what_the_cuda_layout_holds(kind):
    q = _ggml(kind, rows=16, cols=512)
    weight = CudaQuantWeight.from_quantized(q, DEVICE)
    assert weight.nbytes * 8 / (16 * 512) == resident_bits(kind, "torch", "cuda", 512, "bf16")


# ---- a whole model --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def k_quant_model(tmp_path_factory, tiny_tokenizer_dir) -> str:
    """A one-layer Qwen3 with 256-wide rows, so K-quants apply to every projection."""
    from memory_check import write_sized_qwen3

    folder = str(tmp_path_factory.mktemp("qwen3-h256"))
    return write_sized_qwen3(folder, tiny_tokenizer_dir, hidden=256, layers=1, intermediate=512, heads=4,
                             kv_heads=2, vocab=512)


def _prompt_and_steps(llm, text: str, steps: int = 3) -> np.ndarray:
    """float32 logits for the prompt and then `steps` one-token decode steps (greedy)."""
    ops, model = llm.ops, llm.model
    caches = model.make_caches()
    ids = llm.encode(text)
    out = [ops.to_numpy(ops.astype(model(ops.asarray(np.asarray([ids])), caches), "float32"))[0]]
    for _ in range(steps):
        token = int(out[-1][-1].argmax())
        out.append(ops.to_numpy(ops.astype(model(ops.asarray(np.asarray([[token]])), caches), "float32"))[0])
    return np.concatenate(out)


@pytest.mark.parametrize("isq", ["q4k", "q6k", "q8_0"])
def test_a_model_on_the_cuda_layout_matches_its_dequantized_weights(monkeypatch, k_quant_model, isq):
    """The same quantized model twice, in float32: its projections through the CUDA layout and
    kernels, and as the float32 weights those blocks dequantize to."""
    from mistralrs.backends.torch_ops import TorchOps
    from mistralrs.engine.api import load

    held = []
    cuda_prepare = TorchOps.prepare_quantized_linear

    def recorded(self, weight):
        # Interpreted: the CUDA layout on the CPU. On a GPU: what the CUDA device picks itself.
        held.append(CudaQuantWeight.from_quantized(weight, self.torch_device) if INTERPRETED
                    else cuda_prepare(self, weight))
        return held[-1]

    def model(**kwargs):
        llm = load(k_quant_model, backend="torch", cpu=INTERPRETED, dtype="f32", isq=isq, compile=False, **kwargs)
        return _prompt_and_steps(llm, "def quantize(weights): return [round(w) for w in weights]")

    monkeypatch.setattr(TorchOps, "prepare_quantized_linear",
                        lambda self, w: torch.from_numpy(w.dequantize()).to(self.torch_device))
    reference = model()
    monkeypatch.setattr(TorchOps, "prepare_quantized_linear", recorded)
    got = model()
    assert held and all(isinstance(w, CudaQuantWeight) for w in held)
    # float16 scales (K-quants' d * sc is not float16-exact) and float32 sums: close, not equal.
    assert np.abs(got - reference).max() <= 2e-3 * np.abs(reference).max()
    assert (got.argmax(-1) == reference.argmax(-1)).all()


def test_the_load_log_says_when_cuda_dequantizes(monkeypatch):
    """What `quantized_layout` reports for a CUDA device (only inspected here, nothing is moved)."""
    from mistralrs.backends import torch_cuda_quant
    from mistralrs.backends.torch_ops import TorchOps

    ops = TorchOps(cpu=True)
    ops.torch_device, ops.device = torch.device("cuda", 0), "cuda:0"
    assert ops.quantized_layout(_ggml("Q4_K")) is None  # packed: nothing to say
    monkeypatch.setattr(torch_cuda_quant, "triton_unavailable_reason", lambda: "Triton is not installed")
    note = ops.quantized_layout(_ggml("Q4_K"))
    assert "dequantized" in note and "cuda:0" in note and "Triton is not installed" in note


# ---- what a GPU compiles -----------------------------------------------------------------------

COMPILE_CASES = [(group, packed, "bf16", 90) for group in (16, 32, 64, 128, 256) for packed in (True, False)]
COMPILE_CASES += [(32, True, "fp16", 90), (32, False, "fp32", 90), (32, True, "bf16", 80)]


@pytest.fixture(scope="module")
def compiled_kernels() -> dict:
    """tests/triton_compile.py's resource use of the compiled kernels for COMPILE_CASES. It runs in its own process
    because Triton's compiler and its interpreter (TRITON_INTERPRET=1, set for these tests)
    cannot share one."""
    import json
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "triton_compile.py")
    done = subprocess.run([sys.executable, script, json.dumps(COMPILE_CASES)], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "0"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {tuple(case): reports for case, reports in json.loads(done.stdout)}


@pytest.mark.parametrize("case", COMPILE_CASES, ids=str)
def test_kernels_compile_for_the_gpus_without_spilling(compiled_kernels, case):
    """Both kernels with the arguments the wrappers give them, compiled down to a cubin for an
    H100 (sm_90) or an A100 (sm_80): the interpreter does not catch what only the compiler
    rejects (block shapes, types). The decode product is bound by memory reads, so it needs
    enough warps in flight: no spills to the stack, and at most 128 registers a thread
    (four 128-thread programs per multiprocessor at least)."""
    usage = compiled_kernels[tuple(case)]
    assert set(usage) == {"_affine_matvec", "_affine_dequantize"}
    for kernel in usage.values():
        assert kernel["stack"] == 0 and 0 < kernel["registers"] <= 128, usage
