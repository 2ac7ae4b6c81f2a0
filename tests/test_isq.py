"""In-situ quantization: type names, per-tensor plans, backend kernels and loading.

Kernels are checked against the numpy dequantization of the same blocks (itself
bit-exact with ggml, see test_ggml_blocks.py): a format that maps exactly onto the
backend's kernel may differ only by the rounding of the activation dtype; one that
is converted at load has a stated, looser bound.
"""

from __future__ import annotations

import numpy as np
import pytest

from mistralrs.backends import get_ops
from mistralrs.engine.api import load
from mistralrs.engine.isq_loading import IsqPlan
from mistralrs.errors import UserError
from mistralrs.models.base import Linear, Module
from mistralrs.quant import afq, ggml_blocks
from mistralrs.quant.ggml_affine import affine_groups
from mistralrs.quant.isq import IsqType, parse_isq, plan_tensor
from mistralrs.quant.qtensor import GgmlTensor

KINDS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"]


# ---- names and plans --------------------------------------------------------------------------

def test_levels_map_per_backend_as_mistralrs_does():
    assert parse_isq("4", "torch").name == "q4k"
    assert parse_isq(4, "mlx").name == "afq4"
    assert parse_isq("8", "torch").name == "q8_0"
    assert parse_isq("5", "mlx").name == "q5k"
    assert parse_isq("Q4K", "torch").name == "q4k"  # case-insensitive like the original


def test_unknown_isq_name_lists_the_valid_ones():
    with pytest.raises(UserError) as err:
        parse_isq("q7k", "torch")
    assert "q7k" in err.value.message and "q4k" in err.value.message and "afq4" in err.value.message


def test_types_we_do_not_run_say_so():
    with pytest.raises(UserError, match="does not run"):
        parse_isq("hqq4", "torch")


def test_k_quants_fall_back_on_rows_that_are_not_whole_super_blocks():
    plan = plan_tensor(IsqType("q4k"), 576, is_head=False)
    assert plan.target.name == "q5_0" and [t.name for t in plan.alternatives] == ["q4_1"]
    assert "q5_0 or q4_1" in plan.note
    assert plan_tensor(IsqType("q4k"), 1536, is_head=False).target.name == "q4k"
    assert plan_tensor(IsqType("q6k"), 576, is_head=False).target.name == "q8_0"


def test_the_fallback_keeps_whichever_type_reproduces_the_tensor_better():
    """q4k's fallback is q5_0 (llama.cpp) or q4_1 (mistral.rs): q5_0 on ordinary weights, q4_1 on
    weights already on a 4-bit affine grid (a checkpoint converted from a Q4_1 GGUF), which it keeps exactly."""
    rng = np.random.default_rng(3)
    normal = rng.standard_normal((8, 576)).astype(np.float32)
    on_grid = ggml_blocks.dequantize(ggml_blocks.quantize(normal, "Q4_1"), "Q4_1", 576)
    layer = Module(None)
    layer.proj = Linear(None, 576, 8)
    plan = IsqPlan(layer, IsqType("q4k"), ops=None)
    assert plan.quantize("proj.weight", normal).kind == "Q5_0"
    chosen = plan.quantize("proj.weight", on_grid)
    assert chosen.kind == "Q4_1" and np.array_equal(chosen.dequantize(), on_grid)
    assert any("q5_0 or q4_1" in note for note in plan.notes)


def test_output_head_is_promoted():
    assert plan_tensor(IsqType("q4k"), 512, is_head=True).target.name == "q6k"
    assert plan_tensor(IsqType("q4k"), 576, is_head=True).target.name == "q8_0"  # q6k, then its fallback
    assert plan_tensor(IsqType("afq4"), 512, is_head=True).target.name == "afq6"


# ---- kernels --------------------------------------------------------------------------------

def _matrix(rows=192, cols=512, seed=0):
    return (np.random.default_rng(seed).standard_normal((rows, cols)) * 0.05).astype(np.float32)


def _exact_on(backend: str, q) -> bool:
    """Whether the backend runs the format's own values (torch: int4 or two int4; MLX: affine groups)."""
    return affine_groups(q) is not None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [1, 100])  # decode runs the packed kernels, prompt chunks a dense matmul
def test_quantized_linear_matches_dequantized_weights(backend, kind, rows):
    ops = get_ops(backend, cpu=True)
    ops.compute_dtype = "float32"
    w = _matrix()
    q = GgmlTensor(kind, w.shape, ggml_blocks.quantize(w, kind))
    x = np.random.default_rng(1).standard_normal((rows, w.shape[1])).astype(np.float32)
    expected = x @ q.dequantize().T
    got = ops.to_numpy(ops.linear(ops.asarray(x), ops.prepare_quantized_linear(q)))
    error = np.abs(got - expected).max() / np.abs(expected).max()
    if backend == "mlx" and _exact_on(backend, q):
        bound = 1e-5  # float32 activations and scales: the same arithmetic as the dequantizer
    elif _exact_on(backend, q):
        bound = 1e-2  # torch's int4 kernels: exact values, bfloat16 activations and scales
    else:
        bound = 3e-2  # requantized at load (int8 rows on torch, two more bits on MLX)
    assert error < bound, f"{kind} on {backend}: relative error {error:.2e} >= {bound}"


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_afq_runs_on_every_backend(backend, bits):
    ops = get_ops(backend, cpu=True)
    ops.compute_dtype = "float32"
    w = _matrix(cols=256)
    q = afq.quantize(w, bits, 64)
    x = np.random.default_rng(2).standard_normal((3, 256)).astype(np.float32)
    expected = x @ q.dequantize().T
    got = ops.to_numpy(ops.linear(ops.asarray(x), ops.prepare_quantized_linear(q)))
    bound = 1e-5 if backend == "mlx" else 1e-2
    assert np.abs(got - expected).max() / np.abs(expected).max() < bound


def test_int4_dense_unpacking_reads_torchs_packed_layout():
    """Prompt chunks use Int4Weight.dense(); it must be the weight the packed kernel multiplies by."""
    torch = pytest.importorskip("torch")
    from mistralrs.backends.torch_quant import Int4Weight

    w = _matrix(rows=192, cols=256)
    q = GgmlTensor("Q4_1", w.shape, ggml_blocks.quantize(w, "Q4_1"))
    packed = Int4Weight.from_groups(affine_groups(q))
    assert packed.unpackable()  # torch's layout on this CPU is one we know (64- or 32-row blocks)
    identity = torch.eye(256, dtype=torch.bfloat16)
    kernel_weight = torch._weight_int4pack_mm_for_cpu(identity, packed.packed, 32, packed.scales_zeros).float().T
    dense = packed.dense().float()
    # Both round to bfloat16 in their own order: one bfloat16 step of the largest value apart at most.
    assert (dense - kernel_weight).abs().max() <= kernel_weight.abs().max() * 2**-7
    assert (dense - torch.from_numpy(q.dequantize())).abs().max() <= kernel_weight.abs().max() * 2**-6


# ---- loading --------------------------------------------------------------------------------

def _logits(llm, ids):
    ops = llm.ops
    return ops.to_numpy(ops.astype(llm.model(ops.asarray(np.asarray([ids])), llm.model.make_caches()), "float32"))


@pytest.mark.parametrize("isq", ["q8_0", "q4_0", "4"])
def test_isq_model_stays_close_to_full_precision(backend, tiny_model_dir, isq):
    folder = tiny_model_dir("qwen3")
    quantized = load(folder, backend=backend, cpu=True, isq=isq)
    # The same activation dtype (torch's integer kernels run in bfloat16), so only the weights differ.
    full = load(folder, backend=backend, cpu=True, dtype=quantized.dtype)
    ids = full.encode("def quantize(weights): return [round(w) for w in weights]")
    a, b = _logits(full, ids), _logits(quantized, ids)
    # RMS error relative to the logits' RMS. The tiny model's large random weights saturate
    # attention, which amplifies weight error (measured: q8_0 ~0.03, 4-bit ~0.33); an
    # unrelated model scores ~1.4, so the bounds still catch a wrong kernel or layout.
    relative = np.sqrt(np.mean((a - b) ** 2) / np.mean(a**2))
    assert 0 < relative < (0.06 if isq == "q8_0" else 0.5)
    agree = (a.argmax(-1) == b.argmax(-1)).mean()
    assert agree >= (0.9 if isq == "q8_0" else 0.4)  # chance is 1/512


def test_moqe_on_a_dense_model_says_so(backend, tiny_model_dir):
    with pytest.raises(UserError, match="dense model"):
        load(tiny_model_dir("qwen3"), backend=backend, cpu=True, isq="q4k", isq_organization="moqe")


def test_isq_on_a_gguf_is_refused(backend, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(UserError):
        load(str(fake), backend=backend, cpu=True, isq="q4k")


# ---- importance matrices ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def k_quant_model(tmp_path_factory, tiny_tokenizer_dir) -> str:
    """A one-layer Qwen3 with 256-wide rows, so q4k applies to every projection."""
    from memory_check import write_sized_qwen3

    folder = str(tmp_path_factory.mktemp("qwen3-h256"))
    return write_sized_qwen3(folder, tiny_tokenizer_dir, hidden=256, layers=1, intermediate=512, heads=4,
                             kv_heads=2, vocab=512)


def test_calibration_and_imatrix_files_reach_the_k_quant_quantizer(backend, tmp_path, k_quant_model):
    from mistralrs.quant.imatrix import read_imatrix, write_legacy_imatrix

    text = tmp_path / "calibration.txt"
    text.write_text("def quantize(weights):\n    return [round(w) for w in weights]\n" * 40)
    plain = load(k_quant_model, backend=backend, cpu=True, isq="q4k")
    calibrated = load(k_quant_model, backend=backend, cpu=True, isq="q4k", calibration_file=str(text))
    ids = plain.encode("def f(x): return x")
    assert not np.array_equal(_logits(plain, ids), _logits(calibrated, ids))
    # llama.cpp's legacy file: names mapped from blk.N.*, values stored as mean * ncall.
    entries = {"blk.0.attn_q.weight": np.linspace(0.5, 2.0, 256, dtype=np.float32)}
    write_legacy_imatrix(tmp_path / "imatrix.dat", entries, ncall=7)
    read = read_imatrix(tmp_path / "imatrix.dat", "qwen3")
    assert np.allclose(read["model.layers.0.self_attn.q_proj.weight"], entries["blk.0.attn_q.weight"])
    from_file = load(k_quant_model, backend=backend, cpu=True, isq="q4k", imatrix=str(tmp_path / "imatrix.dat"))
    assert not np.array_equal(_logits(plain, ids), _logits(from_file, ids))


def test_imatrix_weights_the_k_quant_search():
    w = _matrix(rows=8, cols=256)
    importance = np.ones(256, np.float32)
    importance[:32] = 100.0
    plain = IsqType("q4k").quantize(w)
    weighted = IsqType("q4k").quantize(w, importance)
    error = lambda q: ((q.dequantize() - w)[:, :32] ** 2).mean()  # noqa: E731
    assert error(weighted) < error(plain)  # the important columns are kept more precisely


def test_malformed_imatrix_is_rejected_with_its_path(backend, tmp_path, tiny_model_dir):
    bad = tmp_path / "broken.dat"
    bad.write_bytes(b"\x05\x00\x00\x00garbage")
    with pytest.raises(UserError, match="broken.dat"):
        load(tiny_model_dir("llama"), backend=backend, cpu=True, isq="q4k", imatrix=str(bad))
    with pytest.raises(UserError, match="--isq"):
        load(tiny_model_dir("llama"), backend=backend, cpu=True, imatrix=str(bad))
