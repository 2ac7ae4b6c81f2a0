"""Writing GGML files (llama.cpp's format before GGUF) for the tests, as llama.cpp's converter did.

Layout: u32 magic ("ggml", "ggmf" + u32 version, "ggjt" + u32 version), 7 x i32 hparams,
the vocabulary (u32 length, bytes, f32 score; no score in unversioned "ggml"), then per
tensor: i32 n_dims, i32 name length, i32 ggml type, dims (row length first), name,
padding to 32 bytes in ggjt, data.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from mistralrs.quant import ggml_blocks

MAGICS = {"ggml": 0x67676D6C, "ggmf": 0x67676D66, "ggjt": 0x67676A74}
TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8}

# A small SentencePiece vocabulary, spelled as Llama's tokenizer.model spells it.
_PIECES = [
    "\u2581",
    "e",
    "h",
    "l",
    "o",
    "w",
    "r",
    "d",
    "t",
    "a",
    "n",
    "i",
    "s",
    "c",
    "m",
    ",",
    ".",
    "!",
    "he",
    "ll",
    "or",
    "ld",
    "in",
    "er",
    "an",
    "th",
    "\u2581h",
    "\u2581w",
    "\u2581t",
    "\u2581a",
    "\u2581he",
    "\u2581wor",
    "\u2581hell",
    "\u2581the",
    "\u2581hello",
    "\u2581world",
    "\u2581and",
    "\u2581in",
    "ing",
    "is",
    "\u2581is",
    "ed",
    "es",
    "at",
    "on",
]  # fmt: skip (259 + 45 = 304 tokens: torch's int4 kernels want a multiple of 16 output rows)


def sentencepiece_vocab() -> list[tuple[str, float]]:
    """(piece, score): <unk>, <s>, </s>, the 256 byte pieces, then pieces ranked by score."""
    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    vocab += [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    vocab += [(piece, -float(rank)) for rank, piece in enumerate(_PIECES)]
    return vocab


def converter_bytes(vocab: list[tuple[str, float]]) -> list[bytes]:
    """Each piece as llama.cpp's GGML converter wrote it (see ggml_file.spell_vocabulary)."""
    out = []
    for index, (piece, _) in enumerate(vocab):
        if index == 0:
            out.append(" \u2047 ".encode())
        elif index in (1, 2):
            out.append(b"")
        elif piece.startswith("<0x"):
            out.append(bytes([int(piece[3:5], 16)]))
        else:
            out.append(piece.replace("\u2581", " ").encode())
    return out


def encode_tensor(values: np.ndarray, kind: str) -> bytes:
    values = np.asarray(values, dtype=np.float32)
    if kind == "F32":
        return values.tobytes()
    if kind == "F16":
        return values.astype(np.float16).tobytes()
    return ggml_blocks.quantize(values.reshape(-1, values.shape[-1]), kind).tobytes()


def decode_tensor(values: np.ndarray, kind: str) -> np.ndarray:
    """What the file holds for `values` stored as `kind`, back as float32."""
    values = np.asarray(values, dtype=np.float32)
    if kind == "F32":
        return values
    if kind == "F16":
        return values.astype(np.float16).astype(np.float32)
    rows = values.reshape(-1, values.shape[-1])
    data = ggml_blocks.quantize(rows, kind)
    return ggml_blocks.dequantize(data, kind, rows.shape[-1]).reshape(values.shape)


def llama_tensors(model) -> dict[str, np.ndarray]:
    """A transformers Llama's weights under GGML names, q/k permuted for ggml's interleaved rope."""
    config = model.config
    out = {}
    for hf_name, tensor in model.state_dict().items():
        data = tensor.float().numpy().copy()
        if ".q_proj." in hf_name or ".k_proj." in hf_name:
            heads = config.num_attention_heads if ".q_proj." in hf_name else config.num_key_value_heads
            data = data.reshape(heads, 2, data.shape[0] // heads // 2, *data.shape[1:]).swapaxes(1, 2)
            data = data.reshape(tensor.shape)
        out[_ggml_name(hf_name)] = data
    return out


def _ggml_name(hf_name: str) -> str:
    top = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
           "lm_head.weight": "output.weight"}  # fmt: skip
    if hf_name in top:
        return top[hf_name]
    leaves = {
        "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
        "self_attn.o_proj": "attention.wo", "input_layernorm": "attention_norm",
        "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "feed_forward.w1",
        "mlp.down_proj": "feed_forward.w2", "mlp.up_proj": "feed_forward.w3",
    }  # fmt: skip
    _, _, layer, rest = hf_name.split(".", 3)
    return f"layers.{layer}.{leaves[rest.removesuffix('.weight')]}.weight"


def write_ggml(
    path: Path,
    hparams: dict,
    vocab: list[tuple[bytes, float]],
    tensors: list[tuple[str, str, tuple[int, ...], bytes]],
    magic: str = "ggjt",
    version: int = 3,
) -> Path:
    """tensors: (name, ggml type name or number, numpy shape, data)."""
    out = bytearray(struct.pack("<I", MAGICS[magic]))
    if magic != "ggml":
        out += struct.pack("<I", version)
    keys = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")
    out += struct.pack("<7i", *(hparams[k] for k in keys))
    for text, score in vocab:
        out += struct.pack("<I", len(text)) + text
        if magic != "ggml":
            out += struct.pack("<f", score)
    for name, kind, shape, data in tensors:
        encoded = name.encode()
        ggml_type = TYPES[kind] if isinstance(kind, str) else kind
        out += struct.pack("<3i", len(shape), len(encoded), ggml_type)
        out += struct.pack(f"<{len(shape)}i", *reversed(shape)) + encoded
        if magic == "ggjt":
            out += b"\0" * (-len(out) % 32)
        out += data
    Path(path).write_bytes(bytes(out))
    return Path(path)


def write_llama(path: Path, model, kinds=None, magic: str = "ggjt", version: int = 3, skip=()) -> Path:
    """The model as a GGML file; kinds: GGML name -> storage type for 2-D tensors (default F32)."""
    config = model.config
    vocab = sentencepiece_vocab()
    assert len(vocab) == config.vocab_size
    hparams = dict(n_vocab=config.vocab_size, n_embd=config.hidden_size, n_mult=32,
                   n_head=config.num_attention_heads, n_layer=config.num_hidden_layers,
                   n_rot=config.hidden_size // config.num_attention_heads, ftype=0)  # fmt: skip
    tensors = []
    for name, values in llama_tensors(model).items():
        if name in skip:
            continue
        kind = (kinds or {}).get(name, "F32") if values.ndim == 2 else "F32"
        tensors.append((name, kind, values.shape, encode_tensor(values, kind)))
    scored = list(zip(converter_bytes(vocab), (score for _, score in vocab), strict=True))
    return write_ggml(path, hparams, scored, tensors, magic, version)
