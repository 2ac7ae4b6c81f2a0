"""`mistralrs quantize` and `--from-uqff`: written once, loaded bit-identically to `--isq`, on either backend."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cli_runner import cli
from mistralrs.engine.api import load
from mistralrs.engine.uqff_export import export_uqff
from mistralrs.errors import UserError

TYPES = ["q4_0", "q8_0", "q4k", "q6k", "afq4"]
TEXT = "def quantize(weights): return [round(w) for w in weights]"


def _logits(llm, ids):
    ops = llm.ops
    out = llm.model(ops.asarray(np.asarray([ids])), llm.model.make_caches())
    return ops.to_numpy(ops.astype(out, "float32"))


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """qwen2 (q/k/v biases) quantized to every type, written in directory mode."""
    folder = tiny_model_dir("qwen2")
    out = tmp_path_factory.mktemp("uqff")
    result = export_uqff(folder, TYPES, out, backend="torch")
    return folder, out, result


@pytest.mark.parametrize("quant", TYPES)
def test_from_uqff_equals_isq_bit_for_bit(backend, exported, quant):
    folder, out, _ = exported
    from_file = load(str(out), backend=backend, cpu=True, from_uqff=f"{quant}-0.uqff")
    in_situ = load(folder, backend=backend, cpu=True, isq=quant)
    ids = in_situ.encode(TEXT)
    assert np.array_equal(_logits(from_file, ids), _logits(in_situ, ids))


def test_directory_mode_writes_a_loadable_model_folder(exported):
    _, out, result = exported
    names = set(os.listdir(out))
    assert {"config.json", "tokenizer.json", "residual.safetensors", "uqff_report.json", "README.md"} <= names
    assert {f"{t}-0.uqff" for t in TYPES} <= names
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "base_model:" in card and "--from-uqff q4k-0.uqff" in card


def test_files_do_not_depend_on_the_backend_that_wrote_them(tiny_model_dir, tmp_path):
    """A set written with either backend is the same bytes, so each loads on the other."""
    pytest.importorskip("mlx.core")
    folder = tiny_model_dir("qwen3")
    export_uqff(folder, ["q4_0"], tmp_path / "torch", backend="torch")
    export_uqff(folder, ["q4_0"], tmp_path / "mlx", backend="mlx")
    for name in ("q4_0-0.uqff", "residual.safetensors"):
        assert (tmp_path / "torch" / name).read_bytes() == (tmp_path / "mlx" / name).read_bytes()
    for backend, written_by in (("mlx", "torch"), ("torch", "mlx")):
        llm = load(str(tmp_path / written_by), backend=backend, cpu=True, from_uqff="q4_0-0.uqff")
        assert llm.generate(TEXT).usage.completion_tokens > 0


def test_sharded_sets_are_found_from_the_first_shard(backend, tiny_model_dir, tmp_path):
    folder = tiny_model_dir("qwen3")
    result = export_uqff(folder, ["q8_0"], tmp_path, backend=backend, shard_limit=20_000)
    assert len(result.sets["q8_0"]) > 2
    sharded = load(str(tmp_path), backend=backend, cpu=True, from_uqff="q8_0-0.uqff")
    in_situ = load(folder, backend=backend, cpu=True, isq="q8_0")
    ids = in_situ.encode(TEXT)
    assert np.array_equal(_logits(sharded, ids), _logits(in_situ, ids))


def test_missing_shard_is_an_error(backend, tiny_model_dir, tmp_path):
    result = export_uqff(tiny_model_dir("qwen3"), ["q8_0"], tmp_path, backend=backend, shard_limit=20_000)
    result.sets["q8_0"][1].unlink()
    with pytest.raises(UserError):
        load(str(tmp_path), backend=backend, cpu=True, from_uqff="q8_0-0.uqff")


def test_uqff_of_another_model_is_refused(backend, exported, tiny_model_dir):
    _, out, _ = exported
    with pytest.raises(UserError, match="different model"):
        load(tiny_model_dir("phi3"), backend=backend, cpu=True, from_uqff=str(out / "q8_0-0.uqff"))


def test_truncated_uqff_is_refused(backend, exported, tmp_path):
    _, out, _ = exported
    data = (out / "q4_0-0.uqff").read_bytes()
    (tmp_path / "q4_0-0.uqff").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        load(str(out), backend=backend, cpu=True, from_uqff=str(tmp_path / "q4_0-0.uqff"))


def test_from_uqff_with_isq_is_refused(backend, exported):
    _, out, _ = exported
    with pytest.raises(UserError, match="--from-uqff"):
        load(str(out), backend=backend, cpu=True, from_uqff="q8_0-0.uqff", isq="q4k")


# ---- the command -------------------------------------------------------------------------

def test_quantize_command_directory_and_file_modes(capsys, tiny_model_dir, tmp_path):
    folder = tiny_model_dir("qwen3")
    code, out, err = cli(capsys, "quantize", "-m", folder, "--isq", "q4_0,q8_0", "-o", str(tmp_path / "dir"))
    assert code == 0, err
    assert "huggingface-cli upload" in out and (tmp_path / "dir" / "README.md").is_file()
    code, out, err = cli(capsys, "quantize", "-m", folder, "--isq", "q8_0", "-o", str(tmp_path / "one" / "m.uqff"),
                          "--no-readme")
    assert code == 0, err
    assert (tmp_path / "one" / "m-0.uqff").is_file() and not (tmp_path / "one" / "README.md").exists()
    assert "huggingface-cli" not in out


def test_quantize_command_bad_input_exits_2(capsys, tiny_model_dir, tmp_path):
    folder = tiny_model_dir("qwen3")
    code, _, err = cli(capsys, "quantize", "-m", folder, "--isq", "q4k,q8_0", "-o", str(tmp_path / "x.uqff"))
    assert code == 2 and "one .uqff file" in err
    code, _, err = cli(capsys, "quantize", "-m", folder, "--isq", "q9", "-o", str(tmp_path))
    assert code == 2 and "Unknown --isq" in err
