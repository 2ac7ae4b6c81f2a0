"""What a model occupies once loaded: weights under a quantization type, plus the runtime's share.

Linear (projection) weights take the type, or its per-tensor fallback when their input features
do not fit the type's blocks; embeddings and the LM head take the promoted type; each is counted
at the bits the backend's kernel layout holds it in (quant.resident), not the format's own. Norms,
biases and anything else 1-D stay at the compute dtype. A tied LM head is the embedding, so it is
counted once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mistralrs.engine.compiling import COMPILED_LAYERS_BYTES
from mistralrs.quant.resident import quantized_compute_dtype, resident_bits
from mistralrs.tune.metadata import DTYPE_BYTES, ModelMetadata, TensorInfo
from mistralrs.tune.quant_types import PROMOTED, UNQUANTIZED_BITS, QuantType, lookup, storage_type

# What loading adds beyond the weights, per backend, calibrated on the CPU from anonymous resident
# memory after `load` (which hands freed heap back with malloc_trim) on a 76M-parameter model with
# a 512-token vocabulary and the 134.5M-parameter benchmark model with a 49,152-token one
# (tests/test_cli_tune.py). The part that grows with the vocabulary is the tokenizer's tables;
# the constant is the rest an unquantized load leaves resident (MLX: ~34 MB, torch: ~1 MB).
RUNTIME_OVERHEAD_BYTES = {"torch": 1_000_000, "mlx": 34_000_000}
OVERHEAD_BYTES_PER_VOCAB_ENTRY = {"torch": 280, "mlx": 265}
# In-situ quantization leaves a few MB beyond the quantized weights (the loader pins glibc's mmap
# threshold, so the float copies it makes and drops are returned to the OS; measured +2-4 MB on
# torch and +4-11 MB on MLX beyond weights and tokenizer), in place of the unquantized constant.
ISQ_OVERHEAD_BYTES = {"torch": 3_000_000, "mlx": 8_000_000}

EMBEDDING = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|tok_embeddings)\.weight$")
HEAD = re.compile(r"(^|\.)(lm_head|output)\.weight$")


@dataclass(frozen=True)
class Estimate:
    weights_bytes: int
    overhead_bytes: int
    fallback_tensors: int  # tensors stored as another type because their shape does not fit

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.overhead_bytes


def text_config(config: dict) -> dict:
    """Multimodal checkpoints nest the language model's shape under text_config."""
    nested = config.get("text_config")
    return {**config, **nested} if isinstance(nested, dict) else config


def estimate_size(meta: ModelMetadata, quant: QuantType, compute_dtype: str, *,
                  backend: str = "torch", device: str = "cpu", compiled: bool = False) -> Estimate:
    """Bytes `meta`'s model takes loaded as `quant` (an unquantized type: everything at that dtype)
    on `backend` ("torch" or "mlx") and `device` ("cpu", "cuda" or "metal"); `compiled`: the load
    compiles its decoder layers (engine.compiling.compiles_layers), which keeps the compiler resident."""
    # Unquantized, everything is at that dtype; quantized, what stays unquantized is at the compute dtype.
    if quant.quantized:
        compute_dtype = quantized_compute_dtype(compute_dtype, backend, device)
    compute_bits = UNQUANTIZED_BITS[compute_dtype] if quant.quantized else quant.bits
    layout = (backend, device, compute_dtype)
    tied = text_config(meta.config).get("tie_word_embeddings") is True
    has_embedding = any(EMBEDDING.search(t.name) for t in meta.tensors)
    total_bits, fallbacks = 0.0, 0
    for tensor in meta.tensors:
        if HEAD.search(tensor.name) and tied and has_embedding:
            continue  # the head is the embedding
        bits, fell_back = _tensor_bits(tensor, quant, compute_bits, layout)
        total_bits += bits
        fallbacks += fell_back
    overhead = runtime_overhead(meta.config, backend)
    if quant.quantized:  # quantizing while loading leaves its own heap behind, in place of the constant
        overhead += isq_overhead(backend) - RUNTIME_OVERHEAD_BYTES[backend]
    if compiled:
        overhead += COMPILED_LAYERS_BYTES
    return Estimate(int(total_bits // 8), overhead, fallbacks)


def runtime_overhead(config: dict, backend: str = "torch") -> int:
    vocab = int(text_config(config).get("vocab_size") or 0)
    return RUNTIME_OVERHEAD_BYTES[backend] + OVERHEAD_BYTES_PER_VOCAB_ENTRY[backend] * vocab


def isq_overhead(backend: str) -> int:
    """What quantizing while loading leaves resident beyond the quantized weights (in place of
    RUNTIME_OVERHEAD_BYTES; the tokenizer's share is the same)."""
    return ISQ_OVERHEAD_BYTES[backend]


def _tensor_bits(tensor: TensorInfo, quant: QuantType, compute_bits: float,
                 layout: tuple[str, str, str]) -> tuple[float, bool]:
    if tensor.dtype not in ("F32", "F16", "BF16", "F64"):
        return tensor.elements * DTYPE_BYTES.get(tensor.dtype, 1) * 8, False  # integer tables stay as stored
    if not quant.quantized or len(tensor.shape) < 2 or not tensor.name.endswith(".weight"):
        return tensor.elements * compute_bits, False
    embedding = EMBEDDING.search(tensor.name) is not None
    sensitive = embedding or HEAD.search(tensor.name)
    wanted = lookup(PROMOTED[quant.name]) if sensitive else quant
    in_features = tensor.shape[-1]
    stored = storage_type(wanted.name, in_features)
    if stored is None:
        return tensor.elements * compute_bits, True
    backend, device, compute_dtype = layout
    bits = resident_bits(stored.format, backend, device, in_features, compute_dtype, embedding=embedding)
    return tensor.elements * bits, stored is not wanted


def parameter_count(meta: ModelMetadata) -> int:
    tied = text_config(meta.config).get("tie_word_embeddings") is True
    has_embedding = any(EMBEDDING.search(t.name) for t in meta.tensors)
    return sum(t.elements for t in meta.tensors if not (tied and has_embedding and HEAD.search(t.name)))


def kv_bytes_per_token(config: dict, compute_dtype: str) -> int:
    """K and V for every layer: layers x kv_heads x head_dim x 2 x bytes per element."""
    text = text_config(config)
    heads = int(text.get("num_attention_heads") or 1)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or int(text.get("hidden_size", 0)) // heads)
    layers = int(text.get("num_hidden_layers") or 0)
    return layers * kv_heads * head_dim * 2 * UNQUANTIZED_BITS[compute_dtype] // 8


def context_length(config: dict) -> int:
    text = text_config(config)
    return int(text.get("max_position_embeddings") or text.get("max_seq_len") or 4096)
