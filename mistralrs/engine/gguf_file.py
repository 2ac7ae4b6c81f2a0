"""Reading a GGUF model into the shapes the rest of the engine uses.

The engine loads Hugging Face folders: config.json, weights named as in the HF
checkpoint, tokenizer.json. A GGUF file holds the same model under llama.cpp's
names and conventions, so `read_gguf` translates it to that view:

- `config`: an HF config.json-style dict rebuilt from the GGUF metadata;
- `tensor_names()` / `load_tensor(name)`: HF-named weights, dequantized to float32
  one tensor at a time, with llama.cpp's conversion transforms undone (the
  rotary row permutation of Llama's q/k projections, Gemma's `+1` in its norms);
- `tokenizer` / `tokenizer_json`: a `tokenizers.Tokenizer` rebuilt from the
  vocabulary in the metadata, plus `tokenizer_config` and `generation_config`.

The header is parsed here rather than with `gguf.GGUFReader`, which builds a
Python object per vocabulary entry and takes ~10 s on a 262k-token vocabulary;
the `gguf` package still supplies the quant type table and the dequantizers.
Tensor data stays memory-mapped until a tensor is asked for.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from mistralrs.engine.gguf_tokenizer import (
    Vocabulary,
    build_tokenizer,
    generation_config,
    read_vocabulary,
    tokenizer_config,
)
from mistralrs.errors import ModelLoadError

# ---------------------------------------------------------------------------
# What we accept
# ---------------------------------------------------------------------------

# The storage types mistral.rs loads from GGUF (no IQ types) and gguf-py can dequantize.
SUPPORTED_GGML_TYPES = frozenset(
    GGMLQuantizationType[name]
    for name in (
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "MXFP4",
    )
)  # fmt: skip

SUPPORTED_ARCHITECTURES = ("gemma3", "llama", "phi3", "qwen2", "qwen3")
_ARCHITECTURE_NOTE = (
    "gemma3, llama (also Mistral and SmolLM, which llama.cpp stores as llama), phi3, qwen2, qwen3"
)


_GGUF_MAGIC = b"GGUF"
_GGUF_VERSIONS = (2, 3)  # v1 used 32-bit counts; llama.cpp dropped it in 2023
_DEFAULT_ALIGNMENT = 32



# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def _fail(path: str, problem: str, fix: str) -> ModelLoadError:
    return ModelLoadError(f"Cannot load the GGUF file {path}: {problem} {fix}")


_REDOWNLOAD = "The download or copy was probably interrupted; fetch the file again."


class _Truncated(Exception):
    """Raised by the header parser when it runs past the end of the file."""


# ---------------------------------------------------------------------------
# Header parsing
# ---------------------------------------------------------------------------

_SCALAR_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_ARRAY_DTYPES = {
    0: "u1",
    1: "i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "?",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_FLOAT32, _STRING, _ARRAY = 6, 8, 9


@dataclass(frozen=True)
class _TensorEntry:
    name: str
    shape: tuple[int, ...]  # numpy order: GGUF lists dimensions fastest-moving first
    ggml_type: int
    offset: int  # absolute, in the file


@dataclass
class _GGUFPart:
    """One parsed GGUF file: its metadata, its tensor table, and the mapping of its bytes."""

    path: str
    metadata: dict[str, Any]
    tensors: list[_TensorEntry]
    buffer: mmap.mmap


class _HeaderReader:
    """A cursor over the mapped file that refuses to read past its end."""

    def __init__(self, buffer: mmap.mmap):
        self.buffer = buffer
        self.size = len(buffer)
        self.pos = 0

    def need(self, count: int) -> None:
        if count < 0 or self.pos + count > self.size:
            raise _Truncated

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        self.need(size)
        values = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += size
        return values

    def string(self) -> str:
        (length,) = self.unpack("<Q")
        self.need(length)
        raw = self.buffer[self.pos : self.pos + length]
        self.pos += length
        # Some vocabularies hold partial UTF-8 sequences; keep them rather than fail.
        return raw.decode("utf-8", errors="surrogateescape")

    def value(self, value_type: int):
        if value_type == _FLOAT32:
            return np.float32(self.unpack("<f")[0])  # keep the width: see `_plain`
        if value_type in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[value_type])[0]
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            element_type, count = self.unpack("<IQ")
            if element_type in _ARRAY_DTYPES:
                dtype = np.dtype(_ARRAY_DTYPES[element_type])
                self.need(count * dtype.itemsize)
                values = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.pos).copy()
                self.pos += count * dtype.itemsize
                return values
            if element_type == _STRING:
                self.need(count * 8)  # every string has at least its length field
                return [self.string() for _ in range(count)]
            if element_type == _ARRAY:
                self.need(count * 12)
                return [self.value(_ARRAY) for _ in range(count)]
        raise ValueError(f"unknown metadata value type {value_type}")


def _open_part(path: str) -> _GGUFPart:
    if not os.path.exists(path):
        raise _fail(
            path, "the file does not exist.", "Check the path (and -f/--quantized-file if you gave one)."
        )
    if os.path.isdir(path):
        raise _fail(path, "it is a folder, not a file.", "Pass the .gguf file inside it.")
    size = os.path.getsize(path)

    def check(handle) -> None:
        magic = handle.read(4)
        if len(magic) == 4 and magic != _GGUF_MAGIC:
            raise _fail(
                path,
                f"it is not a GGUF file (it starts with {magic!r}, not {_GGUF_MAGIC!r}).",
                "Pass a .gguf file; for safetensors weights pass the model's Hugging Face folder instead.",
            )
        if size < 24:
            raise _fail(path, f"the file is only {size} bytes, too short for a GGUF header.", _REDOWNLOAD)

    buffer = map_file(path, _fail, check)
    metadata, tensors = parse_or_close(buffer, _parse_header, path, buffer, size)
    return _GGUFPart(path, metadata, tensors, buffer)


def map_file(path: str, fail, check=None) -> mmap.mmap:
    """The file mapped read-only, after `check(handle)`; an OSError becomes `fail(path, problem, fix)`."""
    try:
        with open(path, "rb") as handle:
            if check is not None:
                check(handle)
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise fail(path, f"it cannot be read ({exc.strerror or exc}).", "Check the file's permissions.") from None


def parse_or_close(buffer: mmap.mmap, parse, *args):
    """`parse(*args)`, closing the mapping if it raises."""
    try:
        return parse(*args)
    except BaseException:
        buffer.close()
        raise


def _parse_header(path: str, buffer: mmap.mmap, size: int) -> tuple[dict[str, Any], list[_TensorEntry]]:
    reader = _HeaderReader(buffer)
    reader.pos = 4
    try:
        version, tensor_count, kv_count = reader.unpack("<IQQ")
        if version not in _GGUF_VERSIONS:
            raise _fail(
                path,
                f"it is GGUF version {version}; mistralrs reads versions 2 and 3.",
                "Convert it again with a current llama.cpp.",
            )
        reader.need(kv_count * 12)  # key length + value type, at least
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = reader.string()
            (value_type,) = reader.unpack("<I")
            metadata[key] = reader.value(value_type)
        reader.need(tensor_count * 24)  # name length + rank + type + offset, at least
        table = []
        for _ in range(tensor_count):
            name = reader.string()
            (rank,) = reader.unpack("<I")
            if rank > 4:
                raise ValueError(f"tensor {name} has {rank} dimensions")
            dims = reader.unpack(f"<{rank}Q")
            ggml_type, offset = reader.unpack("<IQ")
            table.append((name, tuple(reversed(dims)), ggml_type, offset))
    except _Truncated:
        raise _fail(
            path, f"the file is truncated: its header runs past the end ({size} bytes).", _REDOWNLOAD
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(path, f"its header is damaged ({exc}).", _REDOWNLOAD) from None

    alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT)) or _DEFAULT_ALIGNMENT
    data_start = (reader.pos + alignment - 1) // alignment * alignment
    tensors = [
        _TensorEntry(name, shape, ggml_type, data_start + offset) for name, shape, ggml_type, offset in table
    ]
    for entry in tensors:
        _check_storage(path, entry, size)
    return metadata, tensors


def _type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"unknown type {ggml_type}"


def _check_storage(path: str, entry: _TensorEntry, file_size: int) -> None:
    if entry.ggml_type not in SUPPORTED_GGML_TYPES:
        supported = ", ".join(sorted(GGMLQuantizationType(t).name for t in SUPPORTED_GGML_TYPES))
        raise _fail(
            path,
            f"tensor {entry.name} is stored as {_type_name(entry.ggml_type)}, which mistralrs cannot load "
            f"(IQ and ternary types are not supported).",
            f"Use a GGUF quantized to one of {supported} (Q4_K_M is a good default), "
            "or load the original Hugging Face model and quantize it with --isq.",
        )
    block_size, _ = GGML_QUANT_SIZES[GGMLQuantizationType(entry.ggml_type)]
    if not entry.shape or entry.shape[-1] % block_size:
        raise _fail(
            path,
            f"tensor {entry.name} has shape {entry.shape}, which does not fit the "
            f"{_type_name(entry.ggml_type)} block size {block_size}.",
            _REDOWNLOAD,
        )
    end = entry.offset + _byte_count(entry)
    if end > file_size:
        raise _fail(
            path,
            f"the file is truncated: tensor {entry.name} ends at byte {end} but the file has {file_size} bytes.",
            _REDOWNLOAD,
        )


def _row_bytes(ggml_type: int, row_length: int) -> int:
    block_size, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    return row_length // block_size * block_bytes


def _byte_count(entry: _TensorEntry) -> int:
    rows = int(np.prod(entry.shape[:-1], dtype=np.int64))
    return rows * _row_bytes(entry.ggml_type, entry.shape[-1])


# ---------------------------------------------------------------------------
# Split files (llama.cpp's gguf-split: every part a complete GGUF, numbered by split.no)
# ---------------------------------------------------------------------------

_SPLIT_NAME = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def _open_parts(paths: list[str]) -> list[_GGUFPart]:
    if not paths:
        raise ModelLoadError("No GGUF file given: pass the .gguf file(s) to load.")
    parts = [_open_part(os.fspath(p)) for p in paths]
    declared = int(parts[0].metadata.get("split.count", 1) or 1)
    if len(parts) == 1 and declared > 1:
        # `-m model-00001-of-00003.gguf` names the first part; llama.cpp finds the rest by name.
        parts = [_open_part(p) for p in _sibling_parts(parts[0].path, declared)]
    if len(parts) == 1:
        return parts

    numbers = [int(part.metadata.get("split.no", -1)) for part in parts]
    counts = {int(part.metadata.get("split.count", 0)) for part in parts}
    if counts != {len(parts)} or sorted(numbers) != list(range(len(parts))):
        listing = ", ".join(
            f"{part.path} (split {no + 1} of {part.metadata.get('split.count', '?')})"
            for part, no in zip(parts, numbers, strict=True)
        )
        raise ModelLoadError(
            f"The GGUF files {listing} are not the complete set of one split model. "
            "Pass every part of the same model (llama.cpp's gguf-split writes NAME-0000K-of-0000N.gguf), "
            "or a single unsplit .gguf file."
        )
    parts = [part for _, part in sorted(zip(numbers, parts, strict=True), key=lambda pair: pair[0])]
    declared_tensors = parts[0].metadata.get("split.tensors.count")
    found_tensors = sum(len(part.tensors) for part in parts)
    if declared_tensors is not None and int(declared_tensors) != found_tensors:
        raise _fail(
            parts[0].path,
            f"its split model declares {declared_tensors} tensors but the {len(parts)} parts hold {found_tensors}.",
            _REDOWNLOAD,
        )
    return parts


def _sibling_parts(first: str, count: int) -> list[str]:
    match = _SPLIT_NAME.match(first)
    if match is None:
        raise _fail(
            first,
            f"it is part of a model split into {count} files, and its name does not say where the others are.",
            'Pass all the parts (with -f "part1.gguf;part2.gguf;...").',
        )
    paths = [f"{match['prefix']}-{no:05d}-of-{count:05d}.gguf" for no in range(1, count + 1)]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise _fail(
            first,
            f"it is one part of a model split into {count} files, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing.",
            "Download every part into the same folder.",
        )
    return paths


# ---------------------------------------------------------------------------
# Tensor names and the transforms llama.cpp applied
# ---------------------------------------------------------------------------

_TOP_LEVEL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_QK_NORM_NAMES = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}

LAYER_NAMES_BY_ARCH = {
    "llama": _LAYER_NAMES,
    "qwen2": _LAYER_NAMES,
    "qwen3": {**_LAYER_NAMES, **_QK_NORM_NAMES},
    # Gemma 3 has "sandwich" norms: llama.cpp's ffn_norm is HF's pre_feedforward_layernorm.
    "gemma3": {
        **_LAYER_NAMES,
        **_QK_NORM_NAMES,
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
    # Phi-3 keeps HF's fused projections: qkv_proj, and gate_up_proj (which llama.cpp calls ffn_up).
    "phi3": {
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_qkv": "self_attn.qkv_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_up": "mlp.gate_up_proj",
        "ffn_down": "mlp.down_proj",
    },
}

# Tensors that describe the rotary embedding rather than weights; they go into the config.
_ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")

_LAYER_TENSOR = re.compile(r"^blk\.(?P<layer>\d+)\.(?P<leaf>[a-z0-9_]+)\.(?P<kind>weight|bias)$")
_TOP_TENSOR = re.compile(r"^(?P<leaf>[a-z0-9_]+)\.(?P<kind>weight|bias)$")


def _hf_name(architecture: str, gguf_name: str) -> str | None:
    match = _LAYER_TENSOR.match(gguf_name)
    if match:
        leaf = LAYER_NAMES_BY_ARCH[architecture].get(match["leaf"])
        return f"model.layers.{match['layer']}.{leaf}.{match['kind']}" if leaf else None
    match = _TOP_TENSOR.match(gguf_name)
    if match and match["leaf"] in _TOP_LEVEL_NAMES:
        return f"{_TOP_LEVEL_NAMES[match['leaf']]}.{match['kind']}"
    return None


def hf_tensor_name(architecture: str, gguf_name: str) -> str | None:
    """The checkpoint name of llama.cpp's tensor `gguf_name` (e.g. for imatrix entries), or None."""
    return _hf_name(architecture, gguf_name)


def _rope_row_order(rows: int, heads: int) -> np.ndarray:
    """Row indices that undo convert_hf_to_gguf's `permute` of Llama's q/k projections.

    llama.cpp rotates interleaved pairs (x0, x1), (x2, x3)...; HF rotates the two
    halves of each head. The converter reorders each head's rows from halves to
    pairs: row (head, half, i) moves to (head, i, half). Reading it back is a
    gather: HF row (head, half, i) comes from GGUF row (head, i, half).
    """
    per_head = rows // heads
    return np.arange(rows).reshape(heads, per_head // 2, 2).swapaxes(1, 2).reshape(-1)


@dataclass(frozen=True)
class _TensorSource:
    """Where one HF tensor's data lives, and what to do to turn GGUF values into HF values."""

    gguf_name: str
    part: _GGUFPart
    entry: _TensorEntry
    row_order: np.ndarray | None = None  # gather rows in this order (Llama q/k)
    subtract: float = 0.0  # Gemma stores norm weights as w + 1

    def raw(self) -> np.ndarray:
        """The stored bytes as (*shape[:-1], bytes_per_row) uint8, a view of the mapped file."""
        shape = self.entry.shape
        count = _byte_count(self.entry)
        data = np.frombuffer(self.part.buffer, dtype=np.uint8, count=count, offset=self.entry.offset)
        return data.reshape(*shape[:-1], _row_bytes(self.entry.ggml_type, shape[-1]))


@dataclass(frozen=True)
class RawTensor:
    """A tensor still in its GGML storage, rows in HF order (for the quantized path)."""

    ggml_type: str
    shape: tuple[int, ...]  # HF (numpy) shape of the values
    data: np.ndarray  # uint8 (*shape[:-1], bytes_per_row)


def _plan_tensors(architecture: str, parts: list[_GGUFPart], config: dict) -> dict[str, _TensorSource]:
    sources: dict[str, _TensorSource] = {}
    seen: dict[str, str] = {}
    for part in parts:
        for entry in part.tensors:
            if entry.name in seen:
                raise _fail(
                    part.path,
                    f"tensor {entry.name} is also in {seen[entry.name]}.",
                    "The files are not parts of one split model; pass the parts of a single model.",
                )
            seen[entry.name] = part.path
            if entry.name in _ROPE_TENSORS:
                continue
            hf_name = _hf_name(architecture, entry.name)
            if hf_name is None:
                raise _fail(
                    part.path,
                    f"it holds tensor {entry.name}, which a {architecture} model does not have.",
                    "The file is damaged or was written for a different architecture; "
                    "use a GGUF converted by llama.cpp's convert_hf_to_gguf.py.",
                )
            sources[hf_name] = _TensorSource(
                entry.name, part, entry, *_undo_conversion(architecture, hf_name, entry, config)
            )
    return sources


def _undo_conversion(
    architecture: str, hf_name: str, entry: _TensorEntry, config: dict
) -> tuple[np.ndarray | None, float]:
    """(row_order, subtract) reversing what convert_hf_to_gguf did to this tensor."""
    if architecture == "llama":
        # LlamaModel.modify_tensors permutes q_proj/k_proj weights and biases for interleaved rope.
        if ".self_attn.q_proj." in hf_name:
            return _rope_row_order(entry.shape[0], config["num_attention_heads"]), 0.0
        if ".self_attn.k_proj." in hf_name:
            return _rope_row_order(entry.shape[0], config["num_key_value_heads"]), 0.0
    if architecture == "gemma3" and hf_name.endswith("norm.weight"):
        # Gemma3Model.modify_tensors adds 1 to every norm weight; HF keeps w and computes (1 + w).
        return None, 1.0
    return None, 0.0


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


def _plain(value):
    """numpy scalars and arrays from the header as JSON-friendly Python values."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.float32):
        # The shortest decimal that is this float32: 9.999999747378752e-06 is config.json's 1e-05.
        return float(str(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


class _Metadata:
    """Typed access to one architecture's metadata keys, with errors naming the missing key."""

    def __init__(self, metadata: dict[str, Any], architecture: str, path: str):
        self.metadata = metadata
        self.architecture = architecture
        self.path = path

    def get(self, key: str, default=None):
        value = self.metadata.get(key)
        return default if value is None else _plain(value)

    def arch(self, key: str, default=None):
        return self.get(f"{self.architecture}.{key}", default)

    def require(self, key: str):
        value = self.arch(key)
        if value is None:
            raise _fail(
                self.path,
                f"its metadata lacks `{self.architecture}.{key}`.",
                "The file is incomplete; convert the model again with a current llama.cpp.",
            )
        return value


_HF_CLASSES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "mistral": ("MistralForCausalLM", "mistral"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
    "phi3": ("Phi3ForCausalLM", "phi3"),
}


def _base_config(meta: _Metadata, tensor_shapes: dict[str, tuple[int, ...]]) -> dict:
    hidden = int(meta.require("embedding_length"))
    heads = int(meta.require("attention.head_count"))
    kv_heads = meta.arch("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):  # a per-layer list in some files; these models use one value
        kv_heads = max(kv_heads)
    head_dim = meta.arch("attention.key_length") or meta.arch("rope.dimension_count") or hidden // heads
    embed_shape = tensor_shapes.get("token_embd.weight")
    tokens = meta.metadata.get("tokenizer.ggml.tokens")
    vocab_size = embed_shape[0] if embed_shape else meta.arch("vocab_size", len(tokens) if tokens else None)
    return {
        "hidden_size": hidden,
        "intermediate_size": int(meta.require("feed_forward_length")),
        "num_hidden_layers": int(meta.require("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads),
        "head_dim": int(head_dim),
        "rms_norm_eps": meta.arch("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": meta.arch("rope.freq_base", 10000.0),
        "max_position_embeddings": meta.arch("context_length", 2048),
        "vocab_size": vocab_size,
        # llama.cpp writes an output projection only when it is not the embedding matrix.
        "tie_word_embeddings": "output.weight" not in tensor_shapes,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "attention_bias": "blk.0.attn_q.bias" in tensor_shapes or "blk.0.attn_qkv.bias" in tensor_shapes,
        "mlp_bias": "blk.0.ffn_down.bias" in tensor_shapes,
        "sliding_window": meta.arch("attention.sliding_window"),
        "hidden_act": "silu",
    }


def _rope_scaling(meta: _Metadata) -> dict | None:
    kind = meta.arch("rope.scaling.type")
    if kind in (None, "none"):
        return None
    scaling: dict[str, Any] = {"rope_type": kind, "factor": meta.arch("rope.scaling.factor", 1.0)}
    original = meta.arch("rope.scaling.original_context_length")
    if original:
        scaling["original_max_position_embeddings"] = original
    return scaling


def _llama3_rope_scaling(rope_freqs: np.ndarray, config: dict, meta: _Metadata) -> dict:
    """Llama 3.1+ rope scaling, which llama.cpp stores only as the per-frequency factors it computed.

    HF's "llama3" rope divides each frequency by 1 (short wavelengths), by `factor`
    (long ones) or by a blend whose weight is linear in 1/wavelength. The factor is
    the largest entry; the blend's slope and intercept give the context length and
    the high frequency factor once the low one is fixed at Llama 3's 1 (only their
    ratios matter). The result must reproduce the tensor, or we refuse to guess.
    """
    factor = float(rope_freqs.max())
    dim = config["head_dim"]
    wavelen = 2 * np.pi * config["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    low = 1.0
    high, original = 4.0, float(meta.arch("rope.scaling.original_context_length", 8192))  # Llama 3.x's values
    blended = (rope_freqs > 1.0 + 1e-6) & (rope_freqs < factor - 1e-6)
    if factor > 1.0 and blended.sum() >= 2:
        # 1/f = smooth + (1 - smooth)/factor, smooth = original/(high - low)/wavelen - low/(high - low)
        smooth = (1.0 / rope_freqs[blended] - 1.0 / factor) / (1.0 - 1.0 / factor)
        slope, intercept = np.polyfit(1.0 / wavelen[blended], smooth, 1)
        if intercept < 0:
            high = low - 1.0 / intercept
            original = slope * (high - low)
    scaling = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": float(round(high, 4)),
        "original_max_position_embeddings": int(round(original)),
    }
    if not np.allclose(_llama3_factors(wavelen, scaling), rope_freqs, rtol=1e-4):
        raise _fail(
            meta.path,
            "its rope_freqs tensor holds a rope scaling that is not Llama 3's.",
            "mistralrs cannot rebuild this rope scaling; load the model's Hugging Face folder instead.",
        )
    return scaling


def _llama3_factors(wavelen: np.ndarray, scaling: dict) -> np.ndarray:
    """What llama.cpp's converter writes to rope_freqs for these parameters."""
    original = scaling["original_max_position_embeddings"]
    low, high, factor = scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["factor"]
    smooth = (original / wavelen - low) / (high - low)
    blended = 1.0 / ((1.0 - smooth) / factor + smooth)
    return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, blended))


def _build_config(architecture: str, meta: _Metadata, parts: list[_GGUFPart]) -> dict:
    shapes = {entry.name: entry.shape for part in parts for entry in part.tensors}
    config = _base_config(meta, shapes)
    family = architecture
    if architecture == "llama" and "mistral" in str(meta.get("general.name", "")).lower():
        family = "mistral"  # llama.cpp converts Mistral models to the llama architecture
    hf_class, model_type = _HF_CLASSES[family]
    config = {"architectures": [hf_class], "model_type": model_type, **config}
    if (scaling := _rope_scaling(meta)) is not None:
        config["rope_scaling"] = scaling
    dims = meta.arch("rope.dimension_count")
    if dims and dims != config["head_dim"] and architecture != "llama":
        config["partial_rotary_factor"] = dims / config["head_dim"]

    if architecture == "llama" and "rope_freqs.weight" in shapes:
        config["rope_scaling"] = _llama3_rope_scaling(
            _read_rope_tensor(parts, "rope_freqs.weight"), config, meta
        )
    if architecture in ("qwen2", "qwen3"):
        config["use_sliding_window"] = False
        config["sliding_window"] = None
    if architecture == "phi3":
        _phi3_config(config, meta, parts, shapes)
    if architecture == "gemma3":
        _gemma3_config(config)
    return config


def _phi3_config(config: dict, meta: _Metadata, parts: list[_GGUFPart], shapes: dict) -> None:
    original = meta.arch("rope.scaling.original_context_length")
    if original:
        config["original_max_position_embeddings"] = original
    if "rope_factors_long.weight" in shapes:
        # Phi-3 "longrope": llama.cpp moves the two factor lists from config.json into tensors.
        config["rope_scaling"] = {
            "rope_type": "longrope",
            "long_factor": _read_rope_tensor(parts, "rope_factors_long.weight").tolist(),
            "short_factor": _read_rope_tensor(parts, "rope_factors_short.weight").tolist(),
        }


def _gemma3_config(config: dict) -> None:
    # Fixed in llama.cpp's gemma3 loader rather than stored in the file (llama-model.cpp):
    # local layers use rope base 10000, every 6th layer is global, no soft-capping.
    pattern = 6
    layers = config["num_hidden_layers"]
    config["hidden_activation"] = "gelu_pytorch_tanh"
    config.pop("hidden_act")
    config["rope_local_base_freq"] = 10000.0
    config["sliding_window_pattern"] = pattern
    config["layer_types"] = [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)
    ]
    # Gemma 3 27B (62 layers) scales queries by hidden/heads rather than head_dim.
    config["query_pre_attn_scalar"] = (
        config["hidden_size"] // config["num_attention_heads"] if layers == 62 else config["head_dim"]
    )
    config["final_logit_softcapping"] = None
    config["attn_logit_softcapping"] = None


def _read_rope_tensor(parts: list[_GGUFPart], name: str) -> np.ndarray:
    for part in parts:
        for entry in part.tensors:
            if entry.name == name:
                return _dequantized(_TensorSource(name, part, entry)).astype(np.float64)
    raise _fail(
        parts[0].path,
        f"it lacks the tensor {name}, which goes with the rope scaling tensors it has.",
        "The file is incomplete; convert the model again with a current llama.cpp.",
    )


def _check_architecture(part: _GGUFPart) -> str:
    architecture = part.metadata.get("general.architecture")
    if architecture is None:
        raise _fail(
            part.path, "its metadata has no `general.architecture`.", "The file is damaged; fetch it again."
        )
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise _fail(
            part.path,
            f"it holds a `{architecture}` model, and mistralrs loads GGUF files of these architectures: "
            f"{_ARCHITECTURE_NOTE}.",
            "Use a GGUF of one of these, or the model's Hugging Face folder if mistralrs supports it.",
        )
    return architecture


def _dequantized(source: _TensorSource) -> np.ndarray:
    raw = source.raw()
    ggml_type = GGMLQuantizationType(source.entry.ggml_type)
    if ggml_type == GGMLQuantizationType.F32:
        values = raw.view(np.float32).copy()  # the view is read-only mapped memory
    else:
        values = dequantize(raw, ggml_type)
    return values.reshape(source.entry.shape)


@dataclass
class GGUFModel:
    """A GGUF model seen as a Hugging Face checkpoint. Build it with `read_gguf`."""

    paths: list[str]
    architecture: str  # general.architecture
    metadata: dict[str, Any]  # of the first part, raw
    config: dict
    tokenizer_config: dict
    generation_config: dict
    _sources: dict[str, _TensorSource] = field(repr=False)
    _vocabulary: Vocabulary | None = field(repr=False)

    def tensor_names(self) -> list[str]:
        """HF names of every weight, in file order (a tied lm_head is absent, as in HF checkpoints)."""
        return list(self._sources)

    def tensor_shape(self, hf_name: str) -> tuple[int, ...]:
        return self._source(hf_name).entry.shape

    def ggml_type(self, hf_name: str) -> str:
        """The GGML storage type of the tensor in the file, e.g. "Q4_K" or "F32"."""
        return GGMLQuantizationType(self._source(hf_name).entry.ggml_type).name

    def load_tensor(self, hf_name: str) -> np.ndarray:
        """The tensor as HF stores it: float32, HF shape and convention. Reads only this tensor."""
        source = self._source(hf_name)
        values = _dequantized(source)
        if source.row_order is not None:
            values = values[source.row_order]
        if source.subtract:
            values -= np.float32(source.subtract)
        return values

    def load_raw(self, hf_name: str) -> RawTensor:
        """The tensor still in GGML blocks (rows in HF order), for quantized matmuls.

        `data` is a read-only view of the mapped file unless rows had to be reordered.
        A tensor whose values llama.cpp changed (Gemma's norms) cannot stay in its
        blocks; it comes back re-encoded as F32.
        """
        source = self._source(hf_name)
        if source.subtract:
            values = self.load_tensor(hf_name)
            return RawTensor("F32", values.shape, values.view(np.uint8))
        data = source.raw()
        if source.row_order is not None:
            data = data[source.row_order]
        return RawTensor(self.ggml_type(hf_name), source.entry.shape, data)

    @property
    def has_tokenizer(self) -> bool:
        return self._vocabulary is not None

    @cached_property
    def tokenizer(self):
        """A `tokenizers.Tokenizer` built from the vocabulary in the metadata (built on first use)."""
        if self._vocabulary is None:
            raise _fail(
                self.paths[0],
                "it has no tokenizer in its metadata.",
                "Pass the model's tokenizer.json with -t/--tokenizer, or its repo with --tok-model-id.",
            )
        return build_tokenizer(self._vocabulary, self.architecture)

    @cached_property
    def tokenizer_json(self) -> str:
        """The tokenizer as tokenizer.json text (`tokenizers.Tokenizer.from_str` reads it)."""
        return self.tokenizer.to_str()

    def _source(self, hf_name: str) -> _TensorSource:
        try:
            return self._sources[hf_name]
        except KeyError:
            raise KeyError(f"{hf_name} is not a tensor of {self.paths[0]}") from None


def read_gguf(paths: list[str] | str) -> GGUFModel:
    """Open a GGUF model (one file, or every part of a split one) as a Hugging Face view.

    Reads the headers only; tensors are read and dequantized by `load_tensor`.
    Raises ModelLoadError naming the file and the fix for anything it cannot load.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [os.fspath(paths)]
    return model_from_parts(_open_parts(list(paths)))


def model_from_parts(parts: list[_GGUFPart]) -> GGUFModel:
    """The HF view of parsed parts (GGML files come here too, their header recast as GGUF metadata)."""
    first = parts[0]
    architecture = _check_architecture(first)
    meta = _Metadata(first.metadata, architecture, first.path)
    config = _build_config(architecture, meta, parts)
    vocabulary = read_vocabulary(meta)
    return GGUFModel(
        paths=[part.path for part in parts],
        architecture=architecture,
        metadata=first.metadata,
        config=config,
        tokenizer_config=tokenizer_config(meta, vocabulary),
        generation_config=generation_config(meta),
        _sources=_plan_tensors(architecture, parts, config),
        _vocabulary=vocabulary,
    )
