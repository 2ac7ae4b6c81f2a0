"""Reading a GGML file (llama.cpp's format before GGUF) as a Hugging Face Llama model.

A GGML file is a bare header (magic, version, seven hyperparameters), a SentencePiece
vocabulary with scores, then tensors until the end of the file. It names no
architecture (every llama.cpp GGML file is a Llama) and stores neither the rope base,
the norm epsilon nor the number of key/value heads: like candle and mistral.rs we
use rope theta 10000 and RMS norm epsilon 1e-5, and take the key/value heads from
`--gqa` (Llama-2-70B files need 8), checked against the key projection's shape.

`read_ggml` recasts the header as the GGUF metadata and tensor table llama.cpp's
GGUF converter would have written, and hands them to `gguf_file.model_from_parts`:
the result is the same `GGUFModel` view (HF names, q/k rope permutation undone,
tokenizer rebuilt from the vocabulary), so loading, quantized kernels and the
tokenizer all go through the GGUF code.

Versions: "ggml" (no version, no scores), "ggmf" v1, "ggjt" v1-v3 (tensor data aligned
to 32 bytes). F32 and F16 tensors read in every version; quantized blocks only in
ggjt v3, whose layouts are today's GGUF layouts (v2 stored f32 scales, v1 and older
bit-shuffled nibbles).
"""

from __future__ import annotations

import mmap
import os
import re
import struct

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from mistralrs.engine.gguf_file import (
    GGUFModel,
    _byte_count,
    _GGUFPart,
    _TensorEntry,
    map_file,
    model_from_parts,
    parse_or_close,
)
from mistralrs.errors import ModelLoadError

GGML_MAGICS = {0x67676D6C: "ggml", 0x67676D66: "ggmf", 0x67676A74: "ggjt"}
_VERSIONS = {"ggmf": (1,), "ggjt": (1, 2, 3)}
_ALIGNMENT = 32
# The storage types of the GGML era (BF16 and later types only ever appeared in GGUF).
_TYPES = frozenset(
    GGMLQuantizationType[name]
    for name in ("F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
)

# What candle's (and so mistral.rs's) GGML Llama loader fixes, as the file does not say.
ROPE_THETA = 10000.0
RMS_NORM_EPS = 1e-5
CONTEXT_LENGTH = 4096

_TOP_LEVEL = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}
_LAYER = {
    "attention.wq": "attn_q",
    "attention.wk": "attn_k",
    "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "attention_norm": "attn_norm",
    "feed_forward.w1": "ffn_gate",
    "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up",
    "ffn_norm": "ffn_norm",
}
_LAYER_TENSOR = re.compile(r"^layers\.(?P<layer>\d+)\.(?P<leaf>[a-z_.0-9]+)\.weight$")

# llama.cpp's token types, as gguf_tokenizer reads them
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_UNK_TEXTS = (" \u2047 ".encode(), b"<unk>", b"")
_BOS, _EOS, _UNK = 1, 2, 0

_REDOWNLOAD = "The download or copy was probably interrupted; fetch the file again."
_RECONVERT = (
    "Convert the original model again with llama.cpp's convert script (ggjt v3), "
    "or better, use a GGUF file of the model (--format gguf)."
)


def _fail(path: str, problem: str, fix: str) -> ModelLoadError:
    return ModelLoadError(f"Cannot load the GGML file {path}: {problem} {fix}")


class _Truncated(Exception):
    def __init__(self, what: str):
        self.what = what


def sniff_ggml(path: str) -> bool:
    """Whether the file starts with a GGML magic (ggml, ggmf or ggjt)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return len(head) == 4 and struct.unpack("<I", head)[0] in GGML_MAGICS


class _Cursor:
    def __init__(self, buffer: mmap.mmap):
        self.buffer = buffer
        self.size = len(buffer)
        self.pos = 0

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        if self.pos + size > self.size:
            raise _Truncated(what)
        values = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += size
        return values

    def take(self, count: int, what: str) -> bytes:
        if count < 0 or self.pos + count > self.size:
            raise _Truncated(what)
        data = self.buffer[self.pos : self.pos + count]
        self.pos += count
        return data


def read_ggml(path: str, gqa: int = 1) -> GGUFModel:
    """Open a GGML Llama file as a Hugging Face view (see `gguf_file.GGUFModel`).

    `gqa`: attention heads per key/value head (`--gqa`). Raises ModelLoadError naming
    the file and the fix for anything it cannot load.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _fail(path, "the file does not exist.", "Check the path given with -m or -f/--quantized-file.")
    if os.path.isdir(path):
        raise _fail(path, "it is a folder, not a file.", "Name the GGML .bin file with -f/--quantized-file.")
    if os.path.getsize(path) == 0:
        raise _fail(path, "the file is empty.", _REDOWNLOAD)
    buffer = map_file(path, _fail)
    metadata, tensors = parse_or_close(buffer, _parse, path, buffer, gqa)
    return model_from_parts([_GGUFPart(path, metadata, tensors, buffer)])


def _parse(path: str, buffer: mmap.mmap, gqa: int):
    cursor = _Cursor(buffer)
    try:
        magic, version = _read_magic(path, cursor)
        hparams = dict(
            zip(
                ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype"),
                cursor.unpack("<7i", "the header"),
                strict=True,
            )
        )
        for key in ("n_vocab", "n_embd", "n_head", "n_layer"):
            if hparams[key] <= 0:
                raise _fail(path, f"its header is damaged ({key} is {hparams[key]}).", _REDOWNLOAD)
        tokens, scores = _read_vocabulary(cursor, hparams["n_vocab"], with_scores=magic != "ggml")
        entries = _read_tensors(path, cursor, magic, version)
    except _Truncated as exc:
        raise _fail(
            path,
            f"the file is truncated: {exc.what} runs past its end ({cursor.size} bytes).",
            _REDOWNLOAD,
        ) from None
    config = _check_tensors(path, entries, hparams, gqa)
    metadata = _metadata(hparams, config, tokens, scores)
    return metadata, [_gguf_entry(entry) for entry in entries.values()]


def _read_magic(path: str, cursor: _Cursor) -> tuple[str, int]:
    raw = cursor.take(4, "the magic number")
    (value,) = struct.unpack("<I", raw)
    magic = GGML_MAGICS.get(value)
    if magic is None:
        hint = (
            "It is a GGUF file: load it with --format gguf (or leave --format out)."
            if raw == b"GGUF"
            else "Pass a llama.cpp GGML .bin file (magic ggml, ggmf or ggjt), or a GGUF file with --format gguf."
        )
        raise _fail(path, f"it is not a GGML file (it starts with {raw!r}).", hint)
    if magic == "ggml":
        return magic, 0
    (version,) = cursor.unpack("<I", "the header")
    if version not in _VERSIONS[magic]:
        raise _fail(
            path,
            f"it is {magic} version {version}; mistralrs reads ggmf v1 and ggjt v1-v3.",
            _RECONVERT,
        )
    return magic, version


def _read_vocabulary(cursor: _Cursor, count: int, with_scores: bool) -> tuple[list[bytes], np.ndarray | None]:
    tokens, scores = [], []
    for index in range(count):
        what = f"the vocabulary (token {index} of {count})"
        (length,) = cursor.unpack("<I", what)
        tokens.append(cursor.take(length, what))
        if with_scores:
            scores.append(cursor.unpack("<f", what)[0])
    return tokens, (np.asarray(scores, dtype=np.float32) if with_scores else None)


def _read_tensors(path: str, cursor: _Cursor, magic: str, version: int) -> dict[str, _TensorEntry]:
    entries: dict[str, _TensorEntry] = {}
    while cursor.pos < cursor.size:
        what = f"the header of tensor {len(entries)}"
        n_dims, name_length, ggml_type = cursor.unpack("<3i", what)
        if not 1 <= n_dims <= 4 or not 0 < name_length <= 1024:
            raise _fail(path, f"its tensor table is damaged (tensor {len(entries)}).", _REDOWNLOAD)
        dims = cursor.unpack(f"<{n_dims}i", what)
        name = cursor.take(name_length, what).decode("utf-8", errors="replace")
        if magic == "ggjt":
            cursor.pos = (cursor.pos + _ALIGNMENT - 1) // _ALIGNMENT * _ALIGNMENT
        entry = _TensorEntry(name, tuple(reversed(dims)), ggml_type, cursor.pos)
        _check_storage(path, entry, magic, version)
        count = _byte_count(entry)
        if cursor.pos + count > cursor.size:
            raise _fail(
                path,
                f"the file is truncated: the data of tensor {name} ends at byte {cursor.pos + count} "
                f"but the file has {cursor.size} bytes.",
                _REDOWNLOAD,
            )
        cursor.pos += count
        if name in entries:
            raise _fail(path, f"it holds tensor {name} twice.", _REDOWNLOAD)
        entries[name] = entry
    return entries


def _check_storage(path: str, entry: _TensorEntry, magic: str, version: int) -> None:
    try:
        kind = GGMLQuantizationType(entry.ggml_type)
    except ValueError:
        kind = None
    if kind not in _TYPES:
        name = kind.name if kind is not None else str(entry.ggml_type)
        raise _fail(
            path,
            f"tensor {entry.name} has ggml type {name}, which mistralrs cannot load "
            "(it reads F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q2_K to Q6_K).",
            "The file is damaged or uses a type llama.cpp has since removed. " + _RECONVERT,
        )
    quantized = kind not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16)
    if quantized and (magic, version) != ("ggjt", 3):
        shown = magic if magic == "ggml" else f"{magic} v{version}"
        raise _fail(
            path,
            f"tensor {entry.name} is quantized as {kind.name} in a {shown} file, which predates the "
            "current block layout (ggjt v3, May 2023: earlier versions stored f32 scales or "
            "shuffled nibbles), and mistralrs reads quantized GGML blocks only in ggjt v3.",
            _RECONVERT,
        )
    block_size, _ = GGML_QUANT_SIZES[kind]
    if entry.shape[-1] % block_size:
        raise _fail(
            path,
            f"tensor {entry.name} has rows of {entry.shape[-1]} values, which do not fit the "
            f"{kind.name} block size {block_size}.",
            _REDOWNLOAD,
        )


def _check_tensors(path: str, entries: dict[str, _TensorEntry], hparams: dict, gqa: int) -> dict:
    """The shapes the hyperparameters and --gqa imply, checked; returns the derived sizes."""
    n_vocab, n_embd, n_head, n_layer = (hparams[k] for k in ("n_vocab", "n_embd", "n_head", "n_layer"))
    for name in entries:
        match = _LAYER_TENSOR.match(name)
        known = name.removesuffix(".weight") in _TOP_LEVEL and name.endswith(".weight")
        if match and match["leaf"] in _LAYER and int(match["layer"]) < n_layer:
            known = True
        if not known:
            raise _fail(
                path,
                f"it holds tensor {name}, which a {n_layer}-layer Llama model does not have.",
                "mistralrs reads GGML files of Llama models only (the only architecture llama.cpp "
                "wrote as GGML); for other models use a GGUF file.",
            )
    required = [f"{top}.weight" for top in _TOP_LEVEL]
    required += [f"layers.{i}.{leaf}.weight" for i in range(n_layer) for leaf in _LAYER]
    for name in required:
        if name not in entries:
            raise _fail(
                path,
                f"it lacks the tensor {name}, which a {n_layer}-layer Llama model needs.",
                "The file is incomplete or damaged; fetch it again or convert the model again.",
            )
    if n_embd % n_head:
        raise _fail(
            path,
            f"its header is damaged ({n_embd} dimensions do not split into {n_head} heads).",
            _REDOWNLOAD,
        )
    head_dim = n_embd // n_head
    kv_rows = entries["layers.0.attention.wk.weight"].shape[0]
    implied = n_embd // kv_rows if kv_rows and n_embd % kv_rows == 0 else None
    implied_note = (
        f"its key projection has {kv_rows // head_dim} key/value heads, so pass --gqa {implied}"
        if implied and n_head % implied == 0
        else f"its key projection has {kv_rows} rows, which no --gqa value fits (the file is damaged)"
    )
    if gqa < 1 or n_head % gqa:
        raise _fail(
            path,
            f"--gqa {gqa} does not divide its {n_head} attention heads into key/value groups;",
            implied_note + ".",
        )
    if kv_rows != n_head // gqa * head_dim:
        raise _fail(
            path,
            f"--gqa {gqa} makes {n_head // gqa} key/value head{'s' if n_head // gqa > 1 else ''}, "
            f"but {implied_note}.",
            "(--gqa is the number of attention heads per key/value head: 8 for Llama-2-70B, 1 for most others.)",
        )
    n_ff = entries["layers.0.feed_forward.w1.weight"].shape[0]
    kv_dim = n_head // gqa * head_dim
    expected = {"tok_embeddings.weight": (n_vocab, n_embd), "norm.weight": (n_embd,),
                "output.weight": (n_vocab, n_embd)}  # fmt: skip
    per_layer = {
        "attention.wq": (n_embd, n_embd), "attention.wk": (kv_dim, n_embd), "attention.wv": (kv_dim, n_embd),
        "attention.wo": (n_embd, n_embd), "attention_norm": (n_embd,), "ffn_norm": (n_embd,),
        "feed_forward.w1": (n_ff, n_embd), "feed_forward.w2": (n_embd, n_ff), "feed_forward.w3": (n_ff, n_embd),
    }  # fmt: skip
    for i in range(n_layer):
        expected.update({f"layers.{i}.{leaf}.weight": shape for leaf, shape in per_layer.items()})
    for name, shape in expected.items():
        if entries[name].shape != shape:
            raise _fail(
                path,
                f"tensor {name} has shape {entries[name].shape}, and the header implies {shape}.",
                "The file is damaged; fetch it again or convert the model again.",
            )
    return {"n_ff": n_ff, "n_kv_head": n_head // gqa, "head_dim": head_dim}


def _gguf_entry(entry: _TensorEntry) -> _TensorEntry:
    """The same tensor under the name llama.cpp's GGUF converter gives it."""
    base = entry.name.removesuffix(".weight")
    if base in _TOP_LEVEL:
        name = _TOP_LEVEL[base]
    else:
        match = _LAYER_TENSOR.match(entry.name)
        name = f"blk.{match['layer']}.{_LAYER[match['leaf']]}"
    return _TensorEntry(f"{name}.weight", entry.shape, entry.ggml_type, entry.offset)


def _metadata(hparams: dict, config: dict, tokens: list[bytes], scores: np.ndarray | None) -> dict:
    spelled, types = spell_vocabulary(tokens)
    metadata = {
        "general.architecture": "llama",
        "llama.context_length": CONTEXT_LENGTH,
        "llama.embedding_length": hparams["n_embd"],
        "llama.block_count": hparams["n_layer"],
        "llama.feed_forward_length": config["n_ff"],
        "llama.attention.head_count": hparams["n_head"],
        "llama.attention.head_count_kv": config["n_kv_head"],
        "llama.rope.dimension_count": config["head_dim"],
        "llama.rope.freq_base": ROPE_THETA,
        "llama.attention.layer_norm_rms_epsilon": RMS_NORM_EPS,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": spelled,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": _BOS,
        "tokenizer.ggml.eos_token_id": _EOS,
        "tokenizer.ggml.unknown_token_id": _UNK,
    }
    if scores is not None:
        metadata["tokenizer.ggml.scores"] = scores
    return metadata


def spell_vocabulary(tokens: list[bytes]) -> tuple[list[str], np.ndarray]:
    """Tokens as a SentencePiece vocabulary spells them, and their llama.cpp token types.

    llama.cpp's GGML converter wrote each piece with "▁" turned into a space, the
    unknown token as " ⁇ ", control tokens (<s>, </s>) as empty strings and the byte
    tokens <0x00>..<0xFF> as the raw byte. Files written otherwise (pieces already
    spelled <s>, <0x41>) are read as they are.
    """
    byte_start = _byte_run(tokens)
    spelled: list[str] = []
    types = np.full(len(tokens), _NORMAL, dtype=np.int32)
    for index, raw in enumerate(tokens):
        text = raw.decode("utf-8", errors="surrogateescape")
        if byte_start is not None and byte_start <= index < byte_start + 256:
            text, types[index] = f"<0x{raw[0]:02X}>", _BYTE
        elif _BYTE_PIECE.match(text):
            text, types[index] = text.upper().replace("<0X", "<0x"), _BYTE
        elif index == _UNK and raw in _UNK_TEXTS:
            text, types[index] = "<unk>", _UNKNOWN
        elif index in (_BOS, _EOS) and raw in (b"", b"<s>", b"</s>"):
            text, types[index] = ("<s>" if index == _BOS else "</s>"), _CONTROL
        elif not raw:
            text, types[index] = f"<control_{index}>", _CONTROL
        elif len(raw) == 1 and raw[0] >= 0x80:
            text, types[index] = f"<0x{raw[0]:02X}>", _BYTE
        else:
            text = text.replace(" ", "\u2581")
        spelled.append(text)
    return spelled, types


def _byte_run(tokens: list[bytes]) -> int | None:
    """Where the 256 byte tokens start, when the converter wrote them as raw bytes."""
    every_byte = [bytes([b]) for b in range(256)]
    for start in range(min(len(tokens) - 255, 16)):
        if tokens[start : start + 256] == every_byte:
            return start
    return None
