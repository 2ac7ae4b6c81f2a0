"""The quantization types tune weighs, per backend, with their storage cost and quality.

`bits` is the format's own storage cost: GGML types from ggml's block sizes (bytes per block /
elements per block), AFQ types as MLX stores them (the bits, plus a 16-bit scale and bias per group
of 64). What a loaded model holds depends on the backend's kernel layout: quant.resident.
"""

from __future__ import annotations

from dataclasses import dataclass

from mistralrs.quant import ggml_blocks
from mistralrs.quant.isq import AFQ_GROUP_SIZE

AFQ_GROUP = AFQ_GROUP_SIZE  # one 16-bit scale and one 16-bit bias per group
UNQUANTIZED_BITS = {"bf16": 16, "f16": 16, "f32": 32}
DTYPE_OF_TORCH_NAME = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}


@dataclass(frozen=True)
class QuantType:
    name: str  # what --isq takes (q4k, afq4), or the dtype name for unquantized rows
    label: str  # what the table shows
    bits: float  # bits per weight
    group: int  # a quantized tensor's input features must be a multiple of this
    quality: str
    quantized: bool = True
    format: str = ""  # the block format quant.resident takes: "Q4_K", "AFQ4" ("" unquantized)

    def fits(self, in_features: int) -> bool:
        return in_features % self.group == 0


def _ggml(name: str, kind: str, quality: str) -> QuantType:
    bits = ggml_blocks.type_size(kind) * 8 / ggml_blocks.block_size(kind)
    return QuantType(name, name.upper(), bits, ggml_blocks.block_size(kind), quality, format=kind)


def _afq(bits: int, quality: str) -> QuantType:
    return QuantType(f"afq{bits}", f"AFQ{bits}", bits + 2 * 16 / AFQ_GROUP, AFQ_GROUP, quality, format=f"AFQ{bits}")


def unquantized(dtype: str) -> QuantType:
    return QuantType(dtype, f"None ({dtype.upper()})", UNQUANTIZED_BITS[dtype], 1, "Baseline", quantized=False)


GGML = {t.name: t for t in (
    _ggml("q8_0", "Q8_0", "Near-lossless"),
    _ggml("q6k", "Q6_K", "Good"),
    _ggml("q5_1", "Q5_1", "Good"),
    _ggml("q5k", "Q5_K", "Good"),
    _ggml("q5_0", "Q5_0", "Good"),
    _ggml("q4_1", "Q4_1", "Acceptable"),
    _ggml("q4k", "Q4_K", "Acceptable"),
    _ggml("q4_0", "Q4_0", "Acceptable"),
    _ggml("q3k", "Q3_K", "Degraded"),
    _ggml("q2k", "Q2_K", "Degraded"),
)}
AFQ = {t.name: t for t in (
    _afq(8, "Near-lossless"), _afq(6, "Good"), _afq(4, "Acceptable"), _afq(3, "Degraded"), _afq(2, "Degraded"),
)}

# A tensor whose input features are not a whole number of K-quant super-blocks (256) gets the
# nearest legacy type instead, as llama.cpp does; legacy types need multiples of 32.
GGML_FALLBACK = {"q2k": "q4_0", "q3k": "q4_0", "q4k": "q5_0", "q5k": "q5_1", "q6k": "q8_0"}

# Embeddings and the LM head are the most quantization-sensitive tensors, so the engine keeps
# them a step up (mistral.rs's sensitive-tensor promotion).
PROMOTED = {
    "q2k": "q6k", "q3k": "q6k", "q4k": "q6k", "q4_0": "q6k", "q4_1": "q6k",
    "q5k": "q8_0", "q6k": "q8_0", "q5_0": "q8_0", "q5_1": "q8_0", "q8_0": "q8_0",
    "afq2": "afq6", "afq3": "afq6", "afq4": "afq6", "afq6": "afq8", "afq8": "afq8",
}


def quantized_types(backend: str) -> list[QuantType]:
    """Every ISQ type `backend` offers, largest first."""
    return list((AFQ if backend == "mlx" else GGML).values())


def lookup(name: str) -> QuantType:
    return GGML.get(name) or AFQ.get(name) or unquantized(name)


def storage_type(name: str, in_features: int) -> QuantType | None:
    """The type a tensor asked to be `name` is stored as; None: left at the model's dtype."""
    chosen = lookup(name)
    if chosen.fits(in_features):
        return chosen
    fallback = GGML_FALLBACK.get(name)
    if fallback is not None and GGML[fallback].fits(in_features):
        return GGML[fallback]
    return None
