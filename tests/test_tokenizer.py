"""The tokenizer wrapper against transformers, on the real Qwen3, Llama 3, Gemma 3 and Llama 2 tokenizers."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import tokenizers

from mistralrs.engine.tokenizer import Tokenizer
from mistralrs.errors import ModelLoadError

try:
    from tokenizer_fixtures import require_npm_tokenizer
except ImportError:  # tests/ collected as a package
    from tests.tokenizer_fixtures import require_npm_tokenizer

transformers = pytest.importorskip("transformers")

NAMES = ["qwen3", "llama3", "gemma3", "llama2"]

# English, accents, CJK, emoji (incl. a skin-tone modifier and a flag), code, odd spacing, and
# strings that look like byte-fallback pieces or SentencePiece markers.
MULTILINGUAL = (
    "Hello world! Héllo café naïve — Ünïcödé façade. 你好，世界。こんにちは、안녕하세요 "
    "🤖👍🏽🇫🇷 😀 𝔘𓀀\n"
    "def square(x: int) -> int:\n    return x ** 2  # tabs\there\n"
    "  leading and trailing spaces  . Don't , stop ? <0xE2> ▁marker\n\n\n"
)


@pytest.fixture(scope="module", params=NAMES)
def pair(request):
    """(our Tokenizer, transformers' tokenizer) for one real tokenizer folder, loaded once per module."""
    folder = require_npm_tokenizer(request.param)
    return request.param, Tokenizer.from_dir(str(folder)), transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_matches_transformers(pair, add_special_tokens):
    _, ours, hf = pair
    expected = hf.encode(MULTILINGUAL, add_special_tokens=add_special_tokens)
    assert ours.encode(MULTILINGUAL, add_special_tokens=add_special_tokens) == expected


@pytest.mark.parametrize("skip_special_tokens", [False, True])
def test_decode_matches_transformers(pair, skip_special_tokens):
    _, ours, hf = pair
    ids = hf.encode(MULTILINGUAL)
    assert ours.decode(ids, skip_special_tokens) == hf.decode(ids, skip_special_tokens=skip_special_tokens)


def test_special_tokens_and_vocab_match_transformers(pair):
    _, ours, hf = pair
    assert ours.vocab_size == len(hf)
    assert ours.bos_token == hf.bos_token
    assert ours.eos_token == hf.eos_token
    assert ours.bos_token_id == hf.bos_token_id
    assert ours.pad_token_id == hf.pad_token_id
    assert ours.eos_token_ids == [hf.eos_token_id]  # no generation_config.json in these folders
    assert ours.chat_template == hf.chat_template


def test_token_text_is_the_single_token_decode(pair):
    _, ours, hf = pair
    for token_id in hf.encode(MULTILINGUAL)[:40]:
        assert ours.token_text(token_id) == hf.decode([token_id])


def _stream(tokenizer: Tokenizer, ids: list[int], skip_special_tokens: bool) -> list[str]:
    decoder = tokenizer.stream_decoder(skip_special_tokens=skip_special_tokens)
    return [decoder.add(token_id) for token_id in ids] + [decoder.flush()]


@pytest.mark.parametrize("skip_special_tokens", [False, True])
def test_stream_decoder_concatenates_to_decode(pair, skip_special_tokens):
    _, ours, hf = pair
    ids = hf.encode(MULTILINGUAL)
    special_ids = [hf.convert_tokens_to_ids(t) for t in hf.all_special_tokens][:3]
    sequences = [
        ids,
        ids[1:],  # starting mid-text: the first-token space rules apply to a different token
        ids[:5] + special_ids + ids[5:] + special_ids,  # special tokens mid-stream
    ]
    for ids in sequences:
        pieces = _stream(ours, ids, skip_special_tokens)
        assert "".join(pieces) == hf.decode(ids, skip_special_tokens=skip_special_tokens)
        # Valid text never shows a replacement character half-way through a character.
        assert not any("\ufffd" in piece for piece in pieces)


def test_stream_decoder_on_arbitrary_ids(pair):
    # Random ids make invalid UTF-8 and odd token orders; the stream must still agree with decode.
    _, ours, hf = pair
    rng = random.Random(1234)
    for _ in range(20):
        ids = [rng.randrange(ours.vocab_size) for _ in range(40)]
        for skip in (False, True):
            assert "".join(_stream(ours, ids, skip)) == hf.decode(ids, skip_special_tokens=skip)


def test_stream_decoder_holds_back_split_characters(pair):
    # Characters that take several tokens (byte-level BPE pieces or <0x..> byte fallbacks) are
    # emitted whole, on the token that completes them, and not before.
    _, ours, _ = pair
    split_chars = []
    for ch in "🤖👍🏽🇫🇷😀你好세Ü𝔘𓀀":
        ids = ours.encode(ch, add_special_tokens=False)
        if any("\ufffd" in ours.decode(ids[:k]) for k in range(1, len(ids))):
            split_chars.append((ch, ids))
    assert split_chars, "the rare characters above take several byte tokens in every tokenizer we test"
    for ch, ids in split_chars:
        decoder = ours.stream_decoder()
        pieces = [decoder.add(token_id) for token_id in ids]
        assert not any("\ufffd" in piece for piece in pieces)
        assert pieces[-1].endswith(ch)
        assert "".join(pieces) + decoder.flush() == ours.decode(ids)


def test_stream_decoder_window_stays_small(pair):
    _, ours, _ = pair
    ids = ours.encode(MULTILINGUAL * 20, add_special_tokens=False)
    decoder = ours.stream_decoder()
    longest_window = 0
    for token_id in ids:
        decoder.add(token_id)
        longest_window = max(longest_window, len(decoder._ids))
    assert longest_window <= 8


# ---- folder contents: generation_config, config variants, in-memory construction -------------------


@pytest.fixture(scope="module")
def qwen3_folder():
    return require_npm_tokenizer("qwen3")


def _folder_with(tmp_path, source_folder, **files):
    """A model folder holding `files` (name -> JSON object or text), tokenizer.json linked from `source_folder`."""
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "tokenizer.json").symlink_to(source_folder / "tokenizer.json")
    return tmp_path


def test_eos_ids_are_the_union_of_generation_config_and_tokenizer(tmp_path, qwen3_folder):
    config = json.loads((qwen3_folder / "tokenizer_config.json").read_text())
    hf = tokenizers.Tokenizer.from_file(str(qwen3_folder / "tokenizer.json"))
    end_of_text, im_end = hf.token_to_id("<|endoftext|>"), hf.token_to_id(config["eos_token"])
    folder = _folder_with(
        tmp_path,
        qwen3_folder,
        **{
            "tokenizer_config.json": config,
            "generation_config.json": {"eos_token_id": [end_of_text, im_end]},
        },
    )
    assert Tokenizer.from_dir(str(folder)).eos_token_ids == [end_of_text, im_end]

    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": end_of_text}))
    assert Tokenizer.from_dir(str(folder)).eos_token_ids == [end_of_text, im_end]


def test_special_tokens_written_as_objects(tmp_path, qwen3_folder):
    config = json.loads((qwen3_folder / "tokenizer_config.json").read_text())
    config["eos_token"] = {"content": config["eos_token"], "lstrip": False, "special": True}
    folder = _folder_with(tmp_path, qwen3_folder, **{"tokenizer_config.json": config})
    tok = Tokenizer.from_dir(str(folder))
    assert tok.eos_token == config["eos_token"]["content"]
    assert tok.eos_token_ids == [tok.token_to_id(config["eos_token"]["content"])]


def test_named_chat_templates_and_chat_template_jinja(tmp_path, qwen3_folder):
    config = json.loads((qwen3_folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "tool_use", "template": "TOOLS"},
        {"name": "default", "template": "DEFAULT"},
    ]
    folder = _folder_with(tmp_path, qwen3_folder, **{"tokenizer_config.json": config})
    assert Tokenizer.from_dir(str(folder)).chat_template == "DEFAULT"

    # transformers 5 saves the template beside the config; that file wins.
    (folder / "chat_template.jinja").write_text("FROM FILE")
    tok = Tokenizer.from_dir(str(folder))
    assert tok.chat_template == "FROM FILE"
    assert tok.chat_template_origin == str(folder / "chat_template.jinja")


def test_tokenizer_override_path(tmp_path, qwen3_folder):
    (tmp_path / "tokenizer_config.json").write_text((qwen3_folder / "tokenizer_config.json").read_text())
    tok = Tokenizer.from_dir(str(tmp_path), tokenizer_json=str(qwen3_folder / "tokenizer.json"))
    assert (
        tok.encode("hello")
        == tokenizers.Tokenizer.from_file(str(qwen3_folder / "tokenizer.json")).encode("hello").ids
    )
    assert tok.eos_token == "<|im_end|>"


def test_built_from_an_in_memory_tokenizer(qwen3_folder):
    # The GGUF loader's path: a tokenizers.Tokenizer built from metadata, plus a config dict.
    backend = tokenizers.Tokenizer.from_file(str(qwen3_folder / "tokenizer.json"))
    tok = Tokenizer(backend, {"eos_token": "<|im_end|>", "chat_template": "T"}, {"bos_token_id": 7}, "x.gguf")
    assert tok.eos_token_ids == [backend.token_to_id("<|im_end|>")]
    assert tok.bos_token_id == 7
    assert tok.chat_template == "T"
    assert tok.origin == "x.gguf"


# ---- errors ----------------------------------------------------------------------------------------


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        Tokenizer.from_dir(str(tmp_path))
    assert "tokenizer.json" in info.value.message
    assert str(tmp_path) in info.value.message
    assert "-t/--tokenizer" in info.value.message


def test_missing_override(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ModelLoadError) as info:
        Tokenizer.from_dir(str(tmp_path), tokenizer_json=str(missing))
    assert str(missing) in info.value.message


@pytest.mark.parametrize("content", ["{not json", "{}", '{"model": {"type": "BPE"}}', "\x00\xff"])
def test_malformed_tokenizer_json(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="latin-1")
    with pytest.raises(ModelLoadError) as info:
        Tokenizer.from_dir(str(tmp_path))
    assert str(path) in info.value.message
    assert "-t/--tokenizer" in info.value.message


def test_malformed_tokenizer_config(tmp_path, qwen3_folder):
    shutil.copy(qwen3_folder / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": ')
    with pytest.raises(ModelLoadError) as info:
        Tokenizer.from_dir(str(tmp_path))
    assert str(tmp_path / "tokenizer_config.json") in info.value.message
