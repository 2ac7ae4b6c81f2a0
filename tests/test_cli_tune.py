"""`mistralrs tune`: the options table and JSON on a fake machine, --emit-config read back by
from-config, bad input, and the size estimate against the memory a real load takes.

Most runs are in-process with `detect_machine` replaced, so the verdicts do not depend on this
machine; one subprocess run checks the real detection end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from cli_runner import cli
from memory_check import estimated_load_bytes, measured_load_bytes, write_sized_qwen3
from mistralrs.cli.config_file import read_config_file
from mistralrs.cli.loading import check_loading_options, load_model
from mistralrs.engine.compiling import COMPILED_LAYERS_BYTES, ENV
from mistralrs.quant.resident import quantized_compute_dtype, resident_bits
from mistralrs.tune import machine as machine_module
from mistralrs.tune.machine import Machine
from mistralrs.tune.quant_types import quantized_types

GiB = 1 << 30
BIG_GPU = Machine("cuda", "Fake GPU", 24 * GiB, int(24 * GiB * 0.9), offload_bytes=64 * GiB)
TORCH_TYPES = ["q8_0", "q6k", "q5_1", "q5k", "q5_0", "q4_1", "q4k", "q4_0", "q3k", "q2k"]
MLX_TYPES = ["afq8", "afq6", "afq4", "afq3", "afq2"]
OPTION_KEYS = {"quant", "dtype", "label", "size_bytes", "memory_fraction", "context_tokens", "context_is_max",
               "quality", "status", "recommended"}


@pytest.fixture
def fake_machine(monkeypatch):
    """Set the machine tune sees: `fake_machine(Machine(...))`; BIG_GPU until then."""
    current = [BIG_GPU]
    monkeypatch.setattr(machine_module, "detect_machine", lambda backend: current[0])
    monkeypatch.setenv("COLUMNS", "200")
    return lambda m: current.__setitem__(0, m)


def tune_json(capsys, *args: str) -> dict:
    code, out, err = cli(capsys, "tune", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def one_error_line(capsys, *args: str) -> str:
    code, out, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, out, err)
    return lines[0]


def test_json_schema_and_every_type_of_the_backend(capsys, fake_machine, tiny_model_dir, backend):
    types = {"torch": TORCH_TYPES, "mlx": MLX_TYPES}[backend]
    data = tune_json(capsys, "-m", tiny_model_dir("qwen3"), "--backend", backend)
    assert set(data) == {"version", "model", "machine", "backend", "profile", "options", "recommended",
                         "paged_attention", "compiled_layers"} and data["version"] == 1
    assert data["compiled_layers"] is False  # a GPU (and these tests run eagerly: MISTRALRS_COMPILE=0)
    assert data["backend"] == backend and data["profile"] == "balanced"
    assert data["machine"] == {"kind": "cuda", "name": "Fake GPU", "memory_bytes": BIG_GPU.memory_bytes,
                               "budget_bytes": BIG_GPU.budget_bytes, "offload_bytes": BIG_GPU.offload_bytes}
    model = data["model"]
    assert model["dtype"] == "f32" and model["context_length"] == 512
    # qwen3 fixture: 2 layers x 2 KV heads x head_dim 32 x (K and V) x 4 bytes.
    assert model["kv_bytes_per_token"] == 2 * 2 * 32 * 2 * 4
    options = data["options"]
    assert all(set(o) == OPTION_KEYS for o in options)
    assert [o["dtype"] for o in options[:3]] == ["f32", "bf16", "f16"]
    assert [o["quant"] for o in options[3:]] == types
    assert all(o["status"] == "fits" and o["context_is_max"] for o in options)
    assert [o["quant"] for o in options if o["recommended"]] == [types[0]]  # balanced: 8 bits
    assert data["recommended"]["quant"] == types[0]
    assert data["recommended"]["command"].endswith(f"--backend {backend} --isq {types[0]}")


def test_profiles_pick_different_options(capsys, fake_machine, tiny_model_dir):
    folder = tiny_model_dir("qwen3")
    picks = {p: tune_json(capsys, "-m", folder, "--profile", p)["recommended"] for p in ("quality", "balanced", "fast")}
    assert picks["quality"] == {"quant": None, "dtype": "auto", "command": f"mistralrs serve -m {folder}"}
    assert picks["balanced"]["quant"] == "q8_0" and picks["fast"]["quant"] == "q4k"


def test_sizes_follow_bits_and_statuses_follow_memory(capsys, fake_machine, tiny_model_dir):
    folder = tiny_model_dir("llama")
    fake_machine(Machine("cpu", "Big CPU", 64 * GiB, 60 * GiB))
    sizes = {o["quant"] or o["dtype"]: o["size_bytes"] for o in tune_json(capsys, "-m", folder)["options"]}
    # On the CPU Q8_0 runs as int8 rows, Q4_0 as int4 groups (and 64-wide rows hold no 256-element
    # super-block, so Q2K falls back to Q4_0 there). (On a model this small, what quantizing while
    # loading leaves behind outweighs the weights, so quantized rows are compared among themselves.)
    assert sizes["f32"] > sizes["bf16"] == sizes["f16"] and sizes["q8_0"] > sizes["q4_0"] == sizes["q2k"]
    # On CUDA the quantized weights are dequantized to the compute dtype (this f32 model's): no saving.
    fake_machine(BIG_GPU)
    sizes = {o["quant"] or o["dtype"]: o["size_bytes"] for o in tune_json(capsys, "-m", folder)["options"]}
    assert sizes["q8_0"] == sizes["q4k"] > sizes["f32"] > sizes["bf16"]  # (+ what quantizing leaves behind)
    # A GPU smaller than the f32 model but with RAM to spill into: f32 is Hybrid, bf16 fits.
    weights = sizes["f32"]
    fake_machine(Machine("cuda", "Small GPU", weights, weights - 1, offload_bytes=10 * weights))
    statuses = {o["quant"] or o["dtype"]: o["status"] for o in tune_json(capsys, "-m", folder)["options"]}
    assert statuses["f32"] == statuses["q4k"] == "hybrid" and statuses["bf16"] == "fits"
    # No GPU and too little RAM for anything.
    fake_machine(Machine("cpu", "Tiny", 1024, 1024))
    data = tune_json(capsys, "-m", folder)
    assert {o["status"] for o in data["options"]} == {"too_large"} and data["recommended"] is None


def test_table_rendering(capsys, fake_machine, tiny_model_dir):
    folder = tiny_model_dir("qwen3")
    code, out, err = cli(capsys, "tune", "-m", folder)
    assert code == 0, err
    for text in ("Tuning Analysis", "Profile: Balanced", "Total VRAM: 24.00 GB", "Quantization Options",
                 "Quant", "Est. Size", "VRAM %", "Context Room", "Quality", "Status", "None (F32)", "Q4K",
                 "Near-lossless", "🚀 Recommended", "✅ Fits", "512 (max)", "Recommended Command",
                 f"mistralrs serve -m {folder} --isq q8_0", "[INFO] PagedAttention"):
        assert text in out, text
    assert out.count("🚀 Recommended") == 1


def test_a_compiled_load_counts_the_compiler(capsys, fake_machine, tiny_model_dir, monkeypatch):
    # On the CPU torch compiles the decoder layers unless told not to, and the compiler stays loaded.
    folder = tiny_model_dir("qwen3")
    fake_machine(Machine("cpu", "Big CPU", 64 * GiB, 60 * GiB))
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)  # a C++ compiler is present
    sizes = {}
    for setting in ("0", "", "1"):
        monkeypatch.setenv(ENV, setting)
        data = tune_json(capsys, "-m", folder, "--backend", "torch")
        assert data["compiled_layers"] is (setting != "0")
        sizes[setting] = [o["size_bytes"] for o in data["options"]]
    assert [c - e for c, e in zip(sizes[""], sizes["0"], strict=True)] == [COMPILED_LAYERS_BYTES] * len(sizes["0"])
    assert sizes["1"] == sizes[""]
    code, out, err = cli(capsys, "tune", "-m", folder, "--backend", "torch")
    assert code == 0 and "for compiled decoder layers" in out and "MISTRALRS_COMPILE=0" in out, err
    # Without a compiler nothing is compiled, whatever the variable asks (loading refuses a forced compile).
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert tune_json(capsys, "-m", folder, "--backend", "torch")["compiled_layers"] is False


def test_k_quants_fall_back_per_tensor(capsys, fake_machine, tiny_model_dir):
    # The fixtures' 64-wide rows are not whole 256-element super-blocks: Q4K falls back to Q5_0
    # everywhere (int8 rows on the CPU), so it weighs exactly what Q5_0 does.
    fake_machine(Machine("cpu", "Big CPU", 64 * GiB, 60 * GiB))
    sizes = {o["quant"]: o["size_bytes"] for o in tune_json(capsys, "-m", tiny_model_dir("llama"))["options"]}
    assert sizes["q4k"] == sizes["q5_0"] and sizes["q6k"] == sizes["q8_0"]


def test_emit_config_is_read_back_by_from_config(capsys, fake_machine, tiny_model_dir, tmp_path, backend):
    folder = tiny_model_dir("qwen3")
    path = tmp_path / "tuned.toml"
    code, out, err = cli(capsys, "tune", "-m", folder, "--backend", backend, "--emit-config", str(path))
    assert code == 0 and "tuned.toml" in err, err
    config = read_config_file(path)
    assert config.command == "serve" and config.server.port == 1234 and len(config.models) == 1
    model = config.models[0]
    eight_bit = {"torch": "q8_0", "mlx": "afq8"}[backend]
    assert (model.opts.model_id, model.opts.backend, model.opts.isq, model.opts.dtype) == (
        folder, backend, eight_bit, "auto")
    # The balanced pick (8-bit ISQ) passes every check `from-config` makes, and loads as the file says.
    check_loading_options(model.opts, model.kind)
    assert load_model(model.opts).model_id == folder
    cli(capsys, "tune", "-m", folder, "--backend", backend, "--profile", "quality", "--emit-config", str(path))
    model = read_config_file(path).models[0]
    check_loading_options(model.opts, model.kind)
    assert model.opts.isq is None
    assert load_model(model.opts).model_id == folder


def test_bad_input_is_one_line_and_exit_2(capsys, fake_machine, tiny_model_dir, tmp_path):
    folder = tiny_model_dir("qwen3")
    assert "--profile" in one_error_line(capsys, "tune", "-m", folder, "--profile", "slow")
    line = one_error_line(capsys, "tune", "-m", folder, "--emit-config", str(tmp_path / "missing" / "x.toml"))
    assert "--emit-config" in line and "x.toml" in line
    assert "config.json" in one_error_line(capsys, "tune", "-m", str(tmp_path))
    fake_machine(Machine("cpu", "Tiny", 1024, 1024))
    assert "fits" in one_error_line(capsys, "tune", "-m", folder, "--emit-config", str(tmp_path / "x.toml"))


def test_real_machine_end_to_end(tiny_model_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "mistralrs.cli.main", "tune", "-m", tiny_model_dir("qwen3"), "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["machine"]["kind"] in ("cuda", "metal", "cpu") and data["machine"]["memory_bytes"] > 0
    assert len(data["options"]) == 3 + len(quantized_types(data["backend"]))


# ---- the estimate against a real load ---------------------------------------------------------

ESTIMATE_TOLERANCE = 0.15


@pytest.fixture(scope="module")
def weighty_model(tmp_path_factory, tiny_tokenizer_dir) -> str:
    # 76M parameters in bf16 (152 MB): the weights, not the runtime, decide the measure.
    folder = str(tmp_path_factory.mktemp("weighty-qwen3"))
    return write_sized_qwen3(folder, tiny_tokenizer_dir, hidden=768, layers=12, intermediate=2048,
                             heads=12, kv_heads=4, vocab=512)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="measures Linux's RssAnon")
# q4_0 rather than q4k here: numpy's K-quant search takes ~100 s on this 76M model, and both
# run on the same int4 layout; the benchmark-model test below covers q4k.
@pytest.mark.parametrize("quant", [None, "q8_0", "q4_0"])
def test_estimate_matches_measured_memory(weighty_model, backend, quant):
    if backend == "mlx" and quant:
        quant = {"q8_0": "afq8", "q4_0": "afq4"}[quant]  # tune offers MLX's own types there
    estimated = estimated_load_bytes(weighty_model, backend, quant)
    measured = measured_load_bytes(weighty_model, backend, quant)
    assert abs(estimated - measured) <= ESTIMATE_TOLERANCE * measured, (estimated, measured)


BENCH_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench-models", "bench-qwen3")


@pytest.mark.skipif(not os.path.isdir(BENCH_MODEL) or not os.path.exists("/proc/self/status"),
                    reason="needs bench-models/bench-qwen3 (../shared/bench/make_models.py) and Linux's RssAnon")
@pytest.mark.parametrize("quant", [None, "q8_0", "q4k"])
def test_estimate_matches_the_benchmark_model(backend, quant):
    # The 134.5M-parameter benchmark model (bf16, 49,152-token vocabulary, 576-wide rows: Q4K
    # falls back to Q5_0 there, which torch runs as two int4 matrices).
    if backend == "mlx" and quant:
        quant = {"q8_0": "afq8", "q4k": "afq4"}[quant]
    estimated = estimated_load_bytes(BENCH_MODEL, backend, quant)
    measured = measured_load_bytes(BENCH_MODEL, backend, quant)
    assert abs(estimated - measured) <= ESTIMATE_TOLERANCE * measured, (estimated, measured)


@pytest.mark.skipif(not os.path.isdir(BENCH_MODEL) or not os.path.exists("/proc/self/status"),
                    reason="needs bench-models/bench-qwen3 (../shared/bench/make_models.py) and Linux's RssAnon")
@pytest.mark.torch_env
def test_estimate_matches_a_compiled_load(monkeypatch):
    # The default torch CPU load compiles its decoder layers; the compiler's share is a constant.
    # (Here rather than on the 76M model above: two compiled loads cost CI more than two minutes.)
    monkeypatch.setenv(ENV, "1")
    estimated = estimated_load_bytes(BENCH_MODEL, "torch", "q8_0")
    # The first compile of these shapes on a machine leaves ~30 MB more behind than later loads,
    # which find inductor's on-disk cache; tune estimates the loads after the first.
    measured_load_bytes(BENCH_MODEL, "torch", "q8_0", compile=True)
    measured = measured_load_bytes(BENCH_MODEL, "torch", "q8_0", compile=True)
    assert abs(estimated - measured) <= ESTIMATE_TOLERANCE * measured, (estimated, measured)


def test_resident_bits_follow_the_kernel_layouts():
    # torch CPU: int4 groups with a bf16 scale and zero (two such matrices for 5-8 bits), or
    # int8 rows with one bf16 scale per row for the 16-wide K-quants.
    assert resident_bits("Q4_K", "torch", "cpu", 4096, "bf16") == 4 + 32 / 32
    assert resident_bits("AFQ4", "torch", "cpu", 4096, "bf16") == 4 + 32 / 32  # groups of 32
    for label in ("Q5_0", "Q5_K", "Q8_0", "AFQ8"):
        assert resident_bits(label, "torch", "cpu", 4096, "bf16") == 2 * (4 + 32 / 32), label
    for label in ("Q6_K", "Q2_K", "Q3_K"):
        assert resident_bits(label, "torch", "cpu", 4096, "bf16") == 8 + 16 / 4096, label
    assert resident_bits("Q4_K", "torch", "cpu", 4096, "bf16", embedding=True) == 8 + 16 / 4096
    # torch CUDA (Triton kernels): at most 4 bits two to a byte, wider a byte each, float16 scale and
    # bias per group of 32 (16 for Q2_K, Q3_K, Q6_K); the embedding table is dequantized there.
    assert resident_bits("Q4_K", "torch", "cuda", 4096, "f16") == 4 + 32 / 32
    assert resident_bits("Q5_0", "torch", "cuda", 4096, "bf16") == 8 + 32 / 32
    assert resident_bits("Q2_K", "torch", "cuda", 4096, "bf16") == 4 + 32 / 16
    assert resident_bits("Q6_K", "torch", "cuda", 4096, "bf16") == 8 + 32 / 16
    assert resident_bits("Q4_K", "torch", "cuda", 4096, "f16", embedding=True) == 16
    # MLX: affine formats keep their bits, scale and bias in the compute dtype; 16-wide ones are requantized.
    assert resident_bits("AFQ4", "mlx", "metal", 4096, "bf16") == 4 + 32 / 32
    assert resident_bits("Q4_K", "mlx", "metal", 4096, "f32") == 4 + 64 / 32
    assert resident_bits("Q6_K", "mlx", "cpu", 4096, "bf16") == 8 + 32 / 32
    assert resident_bits("Q3_K", "mlx", "cpu", 4096, "bf16") == 6 + 32 / 32
    assert quantized_compute_dtype("bf16", "torch", "cpu") == "f32"
    assert quantized_compute_dtype("f32", "mlx", "cpu") == quantized_compute_dtype("f32", "torch", "cuda") == "f32"
