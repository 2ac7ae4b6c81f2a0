"""Rebuilding a `tokenizers.Tokenizer` from the vocabulary in a GGUF file's metadata.

Two kinds, as llama.cpp stores them: `gpt2` (byte-level BPE: tokens, merges and the
`tokenizer.ggml.pre` pre-tokenizer) and `llama` (SentencePiece-style BPE with scores
and byte fallback, as Gemma 3 ships). The result matches the model's own
tokenizer.json (and transformers' GGUF converter), which the tests check.
`meta` below is gguf_file's metadata view: `.metadata` (raw dict), `.get(key)`, `.path`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from mistralrs.errors import ModelLoadError

SUPPORTED_TOKENIZERS = ("gpt2", "llama")

# llama.cpp's token types (tokenizer.ggml.token_type)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


# Pre-tokenizer regexes by `tokenizer.ggml.pre`, as llama.cpp applies them (llama-vocab.cpp)
# and as the models' own tokenizer.json files spell them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZERS = {
    **dict.fromkeys(("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "falcon3", "dbrx"), "llama3"),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), "qwen2"),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"), "digits"
    ),
    "tekken": "tekken",
}
# Pre-tokenizer names whose vocabulary llama.cpp (and the model's tokenizer.json) run with
# `ignore_merges`: a word that is a whole token is taken as is (Llama 3).
_IGNORE_MERGES = ("llama-bpe", "llama3", "llama-v3", "falcon3")
# Qwen2's tokenizer.json NFC-normalizes text first.
_NFC = ("qwen2", "deepseek-r1-qwen")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for the 256 byte values (the byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@dataclass
class Vocabulary:
    kind: str  # tokenizer.ggml.model
    pre: str | None  # tokenizer.ggml.pre
    tokens: list[str]  # spelled as in tokenizer.json (see `_hf_spelling`)
    token_types: np.ndarray
    scores: np.ndarray | None
    merges: list[str] | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None


def read_vocabulary(meta) -> Vocabulary | None:
    tokens = meta.metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        return None
    kind = meta.metadata.get("tokenizer.ggml.model")
    if kind not in SUPPORTED_TOKENIZERS:
        raise ModelLoadError(
            f"Cannot load the GGUF file {meta.path}: its tokenizer is of kind `{kind}`, and mistralrs "
            f"builds tokenizers of kinds {', '.join(SUPPORTED_TOKENIZERS)} (byte-level BPE and "
            "SentencePiece BPE) from GGUF metadata. Pass the model's tokenizer.json with -t/--tokenizer."
        )
    token_types = meta.metadata.get("tokenizer.ggml.token_type")
    token_types = (
        np.full(len(tokens), _NORMAL, dtype=np.int32) if token_types is None else np.asarray(token_types)
    )
    return Vocabulary(
        kind=kind,
        pre=meta.metadata.get("tokenizer.ggml.pre"),
        tokens=_hf_spelling(kind, tokens, token_types),
        token_types=token_types,
        scores=meta.metadata.get("tokenizer.ggml.scores"),
        merges=meta.metadata.get("tokenizer.ggml.merges"),
        # llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise.
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama")),
        add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", kind == "llama")),
        bos_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_id=meta.get("tokenizer.ggml.eos_token_id"),
        unk_id=meta.get("tokenizer.ggml.unknown_token_id"),
    )


def _hf_spelling(kind: str, tokens: list[str], token_types: np.ndarray) -> list[str]:
    """The tokens as tokenizer.json spells them, undoing what convert_hf_to_gguf changed.

    - SentencePiece: the converter writes user-defined tokens with "▁" turned into
      spaces (Gemma's whitespace-run tokens); the model's vocabulary has "▁".
    - Byte-level BPE: a normal token outside the byte alphabet is raw text (a
      mislabelled added token); BPE sees it in byte-level spelling.
    """
    if kind == "llama":
        user_defined = set(np.nonzero(token_types == _USER_DEFINED)[0].tolist())
        return [t.replace(" ", "\u2581") if i in user_defined else t for i, t in enumerate(tokens)]
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    spelled = list(tokens)
    for i in np.nonzero(token_types == _NORMAL)[0].tolist():
        if not set(spelled[i]) <= alphabet:
            spelled[i] = "".join(spelling[b] for b in spelled[i].encode("utf-8", errors="surrogateescape"))
    return spelled


def _vocabulary_ids(tokens: list[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for index, token in enumerate(tokens):
        ids.setdefault(token, index)  # a duplicated token keeps its first id, as llama.cpp does
    return ids


def build_tokenizer(vocab: Vocabulary, architecture: str):
    if vocab.kind == "gpt2":
        tokenizer = Tokenizer(_byte_level_model(vocab))
        _byte_level_pipeline(tokenizer, vocab)
    else:
        tokenizer = Tokenizer(_sentencepiece_model(vocab))
        _sentencepiece_pipeline(tokenizer, vocab, architecture)
    _add_special_tokens(tokenizer, vocab)
    tokenizer.post_processor = _post_processor(vocab)
    return tokenizer


def _byte_level_model(vocab: Vocabulary):
    merges = [tuple(merge.split(" ", 1)) for merge in vocab.merges or []]
    return models.BPE(
        vocab=_vocabulary_ids(vocab.tokens),
        merges=merges,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        byte_fallback=False,
        ignore_merges=vocab.pre in _IGNORE_MERGES,
    )


def _byte_level_pipeline(tokenizer, vocab: Vocabulary) -> None:
    style = _PRE_TOKENIZERS.get(vocab.pre)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)
    if style == "llama3":
        split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    elif style == "qwen2":
        split = pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
        if vocab.pre in _NFC:
            tokenizer.normalizer = normalizers.NFC()
    elif style == "tekken":
        split = pre_tokenizers.Split(Regex(_TEKKEN_SPLIT), behavior="isolated")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    elif style == "digits":
        # StarCoder-style: every digit on its own, then GPT-2's regex (SmolLM's tokenizer.json).
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    else:
        # "gpt-2", "default" and vocabularies we do not know: GPT-2's own regex.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()


def _sentencepiece_model(vocab: Vocabulary):
    ids = _vocabulary_ids(vocab.tokens)
    if vocab.merges:
        merges = [tuple(merge.split(" ", 1)) for merge in vocab.merges]
    else:
        merges = _merges_from_scores(ids, vocab)
    unk = token_text(vocab, vocab.unk_id)
    return models.BPE(vocab=ids, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)


def _merges_from_scores(ids: dict[str, int], vocab: Vocabulary) -> list[tuple[str, str]]:
    """BPE merges for a SentencePiece vocabulary, which lists pieces and scores but no merges.

    This is how transformers converts a SentencePiece model to tokenizer.json
    (`generate_merges`): every split of a piece into two pieces is a merge, ranked
    by the piece's score, then by the lengths of its halves, longest first. In a
    GGUF, llama.cpp overwrote the scores of added (control and user-defined) tokens
    with -1000; SentencePiece gives them 0, so restore that to rank their merges
    where the original tokenizer does.
    """
    scores = (
        np.zeros(len(vocab.tokens))
        if vocab.scores is None
        else np.asarray(vocab.scores, dtype=np.float64).copy()
    )
    added = np.isin(vocab.token_types, (_CONTROL, _USER_DEFINED))
    scores[added & (scores == -1000.0)] = 0.0
    ranked = []
    for piece, piece_id in ids.items():
        splits = []
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            left_id, right_id = ids.get(left), ids.get(right)
            if left_id is not None and right_id is not None:
                splits.append((left_id, right_id, left, right))
        splits.sort()
        score = scores[piece_id]
        ranked.extend((score, len(left), len(right), left, right) for _, _, left, right in splits)
    ranked.sort(key=lambda merge: merge[:3], reverse=True)  # stable: ties keep vocabulary order
    return [(left, right) for *_, left, right in ranked]


def _sentencepiece_pipeline(tokenizer, vocab: Vocabulary, architecture: str) -> None:
    replace_spaces = normalizers.Replace(" ", "\u2581")
    if vocab.add_space_prefix:
        # Every text fragment gets a leading "▁", as llama.cpp and Llama 2's tokenizer.json do.
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), replace_spaces])
    else:
        tokenizer.normalizer = replace_spaces
    if architecture == "gemma3":
        # Mirrors Gemma's tokenizer.json; after the normalizer there is no " " left to split on.
        tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if vocab.add_space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)


def _add_special_tokens(tokenizer, vocab: Vocabulary) -> None:
    """Control tokens become special added tokens, user-defined ones plain added tokens.

    Both are matched whole in the text before BPE runs, as llama.cpp does; the
    tokens are already in the vocabulary, so they keep their ids.
    """
    types = vocab.token_types
    special = [
        AddedToken(vocab.tokens[i], normalized=False, special=True)
        for i in np.nonzero((types == _CONTROL) | (types == _UNKNOWN))[0]
    ]
    plain = [
        AddedToken(vocab.tokens[i], normalized=False, special=False)
        for i in np.nonzero(types == _USER_DEFINED)[0]
    ]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(plain)


def _post_processor(vocab: Vocabulary):
    template_tokens = []
    single, pair = "$A:0", "$A:0 $B:1"
    if vocab.add_bos and vocab.bos_id is not None:
        bos = vocab.tokens[vocab.bos_id]
        template_tokens.append((bos, vocab.bos_id))
        single, pair = f"{bos}:0 {single}", f"{bos}:0 $A:0 {bos}:1 $B:1"
    if vocab.add_eos and vocab.eos_id is not None:
        eos = vocab.tokens[vocab.eos_id]
        template_tokens.append((eos, vocab.eos_id))
        single = f"{single} {eos}:0"
        pair = pair.replace("$A:0", f"$A:0 {eos}:0").replace("$B:1", f"$B:1 {eos}:1")
    byte_level = processors.ByteLevel(trim_offsets=False) if vocab.kind == "gpt2" else None
    if not template_tokens:
        return byte_level
    template = processors.TemplateProcessing(single=single, pair=pair, special_tokens=template_tokens)
    return processors.Sequence([byte_level, template]) if byte_level else template


def token_text(vocab: Vocabulary | None, token_id: int | None) -> str | None:
    if vocab is None or token_id is None or not 0 <= token_id < len(vocab.tokens):
        return None
    return vocab.tokens[token_id]


def chat_template(meta):
    """`tokenizer.chat_template`, or the list form transformers uses when named templates exist."""
    default = meta.get("tokenizer.chat_template")
    named = {
        key.removeprefix("tokenizer.chat_template."): value
        for key, value in meta.metadata.items()
        if key.startswith("tokenizer.chat_template.") and isinstance(value, str)
    }
    if not named:
        return default
    templates = [{"name": "default", "template": default}] if default is not None else []
    return templates + [{"name": name, "template": template} for name, template in named.items()]


def tokenizer_config(meta, vocab: Vocabulary | None) -> dict:
    config: dict[str, Any] = {
        "bos_token": token_text(vocab, meta.get("tokenizer.ggml.bos_token_id")),
        "eos_token": token_text(vocab, meta.get("tokenizer.ggml.eos_token_id")),
        "unk_token": token_text(vocab, meta.get("tokenizer.ggml.unknown_token_id")),
        "pad_token": token_text(vocab, meta.get("tokenizer.ggml.padding_token_id")),
        "chat_template": chat_template(meta),
        "add_bos_token": bool(vocab.add_bos) if vocab else False,
        "add_eos_token": bool(vocab.add_eos) if vocab else False,
        "model_max_length": meta.arch("context_length"),
    }
    return config


def generation_config(meta) -> dict:
    # End of turn / end of message tokens also end generation (llama.cpp's "EOG" set).
    eos_ids: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        token_id = meta.get(f"tokenizer.ggml.{key}")
        if token_id is not None and token_id not in eos_ids:
            eos_ids.append(int(token_id))
    config: dict[str, Any] = {
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else (eos_ids or None),
    }
    if (pad := meta.get("tokenizer.ggml.padding_token_id")) is not None:
        config["pad_token_id"] = pad
    return config


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


