"""GGML files (llama.cpp's format before GGUF): `read_ggml`, `load(format="ggml")` and the CLI.

The files are written by tests/ggml_writer.py the way llama.cpp's converter wrote them
(q/k rows permuted for ggml's rope, the vocabulary's spaces, empty control tokens and raw
byte tokens) from tiny seeded transformers Llamas; the reference is transformers itself,
run on the weights as the file holds them (dequantized for quantized tensors).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from ggml_writer import (
    converter_bytes,
    decode_tensor,
    encode_tensor,
    llama_tensors,
    sentencepiece_vocab,
    write_ggml,
    write_llama,
)

from cli_runner import cli
from mistralrs.engine.ggml_file import read_ggml, spell_vocabulary
from mistralrs.errors import ModelLoadError, UserError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
PROMPT, DECODE, GREEDY = 24, 4, 16
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _hf_model(kv_heads: int):
    config = transformers.LlamaConfig(
        vocab_size=len(sentencepiece_vocab()), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=kv_heads, rms_norm_eps=1e-5, max_position_embeddings=256,
        tie_word_embeddings=False, initializer_range=0.2, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )  # fmt: skip
    torch.manual_seed(kv_heads)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def models():
    return {"mha": _hf_model(4), "gqa": _hf_model(2)}


def _as_stored(model, kind: str):
    """The model with every 2-D weight as a file storing it as `kind` gives it back."""
    if kind == "F32":
        return model
    copy = _hf_model(model.config.num_key_value_heads)
    state = {k: torch.from_numpy(decode_tensor(v.numpy(), kind)) if v.ndim == 2 else v
             for k, v in model.state_dict().items()}  # fmt: skip
    copy.load_state_dict(state)
    return copy


def _reference(model, ids):
    """HF logits: prefill, then one token at a time; and the greedy continuation."""
    with torch.no_grad():
        out = model(torch.tensor([ids[:PROMPT]]), use_cache=True)
        prefill, past, steps = out.logits[0].numpy(), out.cache, []
        for token in ids[PROMPT:]:
            out = model(torch.tensor([[token]]), cache=past, use_cache=True)
            past = out.cache
            steps.append(out.logits[0, -1].numpy())
        out = model(torch.tensor([ids[:PROMPT]]), use_cache=True)
        greedy, past = [], out.cache
        for _ in range(GREEDY):
            greedy.append(int(out.logits[0, -1].argmax()))
            out = model(torch.tensor([[greedy[-1]]]), cache=past, use_cache=True)
            past = out.cache
    return prefill, steps, greedy


def _ours(llm, ids):
    ops, model = llm.ops, llm.model
    caches = model.make_caches()

    def run(chunk):
        return ops.to_numpy(ops.astype(model(ops.asarray(np.array([chunk])), caches), "float32"))[0]

    return run(ids[:PROMPT]), [run([token])[-1] for token in ids[PROMPT:]]


def _relative(ours, ref) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _ids():
    return np.random.default_rng(1).integers(3, len(sentencepiece_vocab()), size=PROMPT + DECODE).tolist()


def _load(folder: Path, backend: str, **kwargs):
    from mistralrs import load

    kwargs.setdefault("format", "ggml")
    kwargs.setdefault("quantized_file", "model.bin")
    return load(str(folder), backend=backend, cpu=True, dtype="f32", **kwargs)


# ---------------------------------------------------------------------------
# float files against transformers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case,gqa", [("mha", 1), ("gqa", 2)])
def test_f32_file_matches_transformers(case, gqa, models, backend, tmp_path):
    from mistralrs.engine.params import SamplingParams

    model = models[case]
    write_llama(tmp_path / "model.bin", model)
    ids = _ids()
    prefill, steps, greedy = _reference(model, ids)
    llm = _load(tmp_path, backend, gqa=gqa)
    assert llm.config["num_key_value_heads"] == model.config.num_key_value_heads
    ours_prefill, ours_steps = _ours(llm, ids)
    assert _relative(ours_prefill, prefill) <= TOLERANCE
    for i, (ours, ref) in enumerate(zip(ours_steps, steps, strict=True)):
        assert _relative(ours, ref) <= TOLERANCE, f"decode step {i}"
    done = llm.generate(ids[:PROMPT], SamplingParams(temperature=0, max_tokens=GREEDY, ignore_eos=True))
    assert done.token_ids == greedy


def test_weights_and_config_come_back_as_hf_has_them(models, tmp_path):
    model = models["gqa"]
    ours = read_ggml(write_llama(tmp_path / "model.bin", model), gqa=2)
    state = model.state_dict()
    assert set(ours.tensor_names()) == set(state)
    for name in ours.tensor_names():
        np.testing.assert_array_equal(ours.load_tensor(name), state[name].numpy(), err_msg=name)
    config = ours.config
    assert config["architectures"] == ["LlamaForCausalLM"]
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "tie_word_embeddings"):  # fmt: skip
        assert config[key] == getattr(model.config, key), key
    # Not in the file: candle's (and mistral.rs's) values for GGML Llamas.
    assert config["rope_theta"] == 10000.0 and config["rms_norm_eps"] == 1e-5
    assert ours.tokenizer_config["chat_template"] is None


@pytest.mark.parametrize("gqa,implied", [(1, "--gqa 2"), (3, "--gqa 2"), (4, "--gqa 2")])
def test_wrong_gqa_is_refused(models, tmp_path, gqa, implied):
    path = write_llama(tmp_path / "model.bin", models["gqa"])
    with pytest.raises(ModelLoadError) as info:
        read_ggml(path, gqa=gqa)
    message = str(info.value)
    assert f"--gqa {gqa}" in message and implied in message and str(path) in message


def test_gqa_on_a_model_without_grouping_is_refused(models, tmp_path):
    path = write_llama(tmp_path / "model.bin", models["mha"])
    with pytest.raises(ModelLoadError, match="pass --gqa 1"):
        read_ggml(path, gqa=2)


# ---------------------------------------------------------------------------
# quantized and half-precision tensors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Q4_0", "Q8_0"])
def test_quantized_file_matches_transformers_on_the_dequantized_weights(kind, models, backend, tmp_path):
    import gguf

    model = models["gqa"]
    tensors = llama_tensors(model)
    write_llama(tmp_path / "model.bin", model, dict.fromkeys(tensors, kind))
    ids = _ids()
    prefill, _, _ = _reference(_as_stored(model, kind), ids)
    llm = _load(tmp_path, backend, gqa=2)
    ours, _ = _ours(llm, ids)
    if backend == "mlx":
        assert _relative(ours, prefill) <= TOLERANCE
    else:
        # torch's CPU integer kernels round activations to bfloat16, which the tiny model's
        # large random weights amplify (measured ~0.06); a wrong layout scores ~1.
        assert _relative(ours, prefill) <= 0.15
        assert (ours.argmax(-1) == prefill.argmax(-1)).mean() >= 0.8

    # The same blocks in a GGUF file run through the same kernels: identical logits.
    writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")
    for key, value in read_ggml(tmp_path / "model.bin", gqa=2).metadata.items():
        if key.startswith(("llama.", "tokenizer.")) and not isinstance(value, (list, np.ndarray)):
            (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(key, value)
    vocab = sentencepiece_vocab()
    writer.add_tokenizer_model("llama")
    writer.add_token_list([piece for piece, _ in vocab])
    writer.add_token_scores([score for _, score in vocab])
    for ggml_name, values in tensors.items():
        name = _gguf_name(ggml_name)
        if values.ndim == 2:
            data = np.frombuffer(encode_tensor(values, kind), dtype=np.uint8).reshape(values.shape[0], -1)
            writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[kind])
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    same, _ = _ours(_load(tmp_path, backend, format="gguf", quantized_file="model.gguf"), ids)
    np.testing.assert_array_equal(ours, same)


def _gguf_name(ggml_name: str) -> str:
    from mistralrs.engine.ggml_file import _gguf_entry, _TensorEntry

    return _gguf_entry(_TensorEntry(ggml_name, (1,), 0, 0)).name


@pytest.mark.parametrize("magic,version", [("ggjt", 1), ("ggjt", 2), ("ggmf", 1), ("ggml", 0)])
def test_f16_tensors_load_in_older_versions(magic, version, models, tmp_path):
    model = models["mha"]
    kinds = dict.fromkeys(llama_tensors(model), "F16")
    ours = read_ggml(write_llama(tmp_path / "model.bin", model, kinds, magic, version))
    for name, values in _as_stored(model, "F16").state_dict().items():
        np.testing.assert_array_equal(ours.load_tensor(name), values.numpy(), err_msg=name)
    if magic == "ggml":  # no scores in the unversioned format
        assert "tokenizer.ggml.scores" not in ours.metadata


def test_f16_ggmf_file_matches_transformers(models, backend, tmp_path):
    model = models["mha"]
    write_llama(tmp_path / "model.bin", model, dict.fromkeys(llama_tensors(model), "F16"), "ggmf", 1)
    ids = _ids()
    prefill, _, _ = _reference(_as_stored(model, "F16"), ids)
    ours, _ = _ours(_load(tmp_path, backend), ids)
    assert _relative(ours, prefill) <= TOLERANCE


@pytest.mark.parametrize("magic,version", [("ggjt", 2), ("ggjt", 1), ("ggmf", 1)])
def test_quantized_tensor_before_ggjt_v3_is_refused(magic, version, models, tmp_path):
    model = models["mha"]
    path = write_llama(
        tmp_path / "model.bin", model, {"layers.0.attention.wq.weight": "Q4_0"}, magic, version
    )
    with pytest.raises(ModelLoadError) as info:
        read_ggml(path)
    message = str(info.value)
    assert str(path) in message and "layers.0.attention.wq.weight" in message
    assert "predates the current block layout" in message and "convert" in message and "GGUF" in message


# ---------------------------------------------------------------------------
# the tokenizer rebuilt from the vocabulary
# ---------------------------------------------------------------------------


def test_vocabulary_is_spelled_as_sentencepiece_spells_it():
    vocab = sentencepiece_vocab()
    spelled, types = spell_vocabulary(converter_bytes(vocab))
    assert spelled == [piece for piece, _ in vocab]
    assert (
        types[0] == 2 and list(types[1:3]) == [3, 3] and set(types[3:259]) == {6} and set(types[259:]) == {1}
    )
    # Files that spell the pieces out read the same.
    assert spell_vocabulary([piece.encode() for piece, _ in vocab])[0] == spelled


def test_tokenizer_from_the_file(models, tmp_path):
    tok = read_ggml(write_llama(tmp_path / "model.bin", models["mha"])).tokenizer
    encoding = tok.encode("hello world")
    assert encoding.tokens == ["<s>", "\u2581hello", "\u2581world"]
    assert tok.encode("héllo").tokens == ["<s>", "\u2581h", "<0xC3>", "<0xA9>", "ll", "o"]  # byte fallback
    for text in ["hello world", "the world is hello, and in it!", "héllo wörld 日本"]:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=True) == text


# ---------------------------------------------------------------------------
# finding the file, and the CLI
# ---------------------------------------------------------------------------


def test_ggml_file_is_recognized_without_format(models, backend, tmp_path):
    from mistralrs.engine.source import resolve_source

    path = write_llama(tmp_path / "weights.bin", models["mha"])
    assert resolve_source(str(tmp_path), quantized_files="weights.bin").file_format == "ggml"
    assert resolve_source(str(path)).file_format == "ggml"
    llm = _load(path, backend, format="auto", quantized_file=None)
    assert llm.arch == "LlamaForCausalLM" and 2 in llm.eos_token_ids


def test_tokenizer_option_overrides_the_file(models, backend, tmp_path, tiny_tokenizer_dir):
    import os

    from mistralrs.engine.tokenizer import Tokenizer

    write_llama(tmp_path / "model.bin", models["mha"])
    llm = _load(tmp_path, backend, tokenizer=os.path.join(tiny_tokenizer_dir, "tokenizer.json"))
    expected = Tokenizer.from_dir(tiny_tokenizer_dir).encode("hello world")
    assert llm.tokenizer.encode("hello world") == expected != [1, 293, 294]


def test_gqa_for_other_formats_is_refused(tiny_model_dir):
    from mistralrs import load

    with pytest.raises(UserError, match="--gqa 8 applies to GGML files only"):
        load(tiny_model_dir("llama"), gqa=8)


def test_cli_runs_a_ggml_file(models, backend, tmp_path, capsys, monkeypatch):
    write_llama(tmp_path / "model.bin", models["gqa"])
    (tmp_path / "chat.jinja").write_text(CHATML)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO("hello world\n\\exit\n"))
    code, out, err = cli(capsys, "run", "--format", "ggml", "-m", str(tmp_path), "-f", "model.bin", "--gqa", "2",
                         "--cpu", "--backend", backend, "-c", str(tmp_path / "chat.jinja"), "--max-seq-len", "96")  # fmt: skip
    assert code == 0, err
    assert out.strip()  # one answer


def _valid_file(models, folder: Path) -> Path:
    return write_llama(folder / "model.bin", models["gqa"])


def _damaged(models, folder: Path, damage: str) -> Path:
    path = _valid_file(models, folder)
    data = path.read_bytes()
    header = 4 + 4 + 7 * 4
    if damage == "magic":
        data = b"nope" + data[4:]
    elif damage == "header":
        data = data[:20]
    elif damage == "vocabulary":
        data = data[: header + 100]
    elif damage == "tensor data":
        data = data[:-10]
    elif damage == "type":
        model = models["gqa"]
        tensors = [(name, "F32", values.shape, encode_tensor(values, "F32"))
                   for name, values in llama_tensors(model).items()]  # fmt: skip
        tensors[1] = (tensors[1][0], 42, tensors[1][2], tensors[1][3])
        return _rewrite(path, model, tensors)
    elif damage == "missing":
        return write_llama(path, models["gqa"], skip=("layers.1.ffn_norm.weight",))
    path.write_bytes(data)
    return path


def _rewrite(path: Path, model, tensors) -> Path:
    config = model.config
    vocab = sentencepiece_vocab()
    hparams = dict(n_vocab=len(vocab), n_embd=config.hidden_size, n_mult=32, n_head=config.num_attention_heads,
                   n_layer=config.num_hidden_layers, n_rot=16, ftype=0)  # fmt: skip
    scored = list(zip(converter_bytes(vocab), (s for _, s in vocab), strict=True))
    return write_ggml(path, hparams, scored, tensors)


@pytest.mark.parametrize(
    "damage,expected",
    [
        ("magic", "not a GGML file"),
        ("header", "truncated: the header"),
        ("vocabulary", "truncated: the vocabulary"),
        ("tensor data", "truncated: the data of tensor output.weight"),
        ("type", "ggml type 42"),
        ("missing", "lacks the tensor layers.1.ffn_norm.weight"),
        ("gqa", "--gqa 3 does not divide"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_file(damage, expected, models, tmp_path, capsys):
    path = _valid_file(models, tmp_path) if damage == "gqa" else _damaged(models, tmp_path, damage)
    gqa = "3" if damage == "gqa" else "2"
    code, out, err = cli(capsys, "run", "--format", "ggml", "-m", str(tmp_path), "-f", path.name, "--gqa", gqa,
                         "--cpu")  # fmt: skip
    assert code == 2
    assert out == ""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err  # one paragraph
    assert str(path) in err and expected in err
    assert "Traceback" not in err
