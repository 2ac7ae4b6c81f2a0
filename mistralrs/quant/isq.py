"""In-situ quantization (ISQ): which type each weight gets, and quantizing it.

`--isq` names a type as mistral.rs does (`q4k`, `q8_0`, `afq4`, ...) or a level
(`2 3 4 5 6 8`) that each backend maps onto its best type. Only the projections of
the decoder layers take the requested type. Two rules change it per tensor, both
as llama.cpp and mistral.rs do:

- the output head and the embedding table are promoted to a more precise type (a
  quantized head costs the most quality per byte saved; a tied head shares the table);
- a type whose blocks do not divide the row (K-quants need rows of 256) falls
  back to a compatible one (q4k -> q5_0 or q4_1, q6k -> q8_0, ...), and the load log says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mistralrs.errors import UserError

from . import ggml_blocks
from .qtensor import GgmlTensor, QuantizedTensor

GGML_NAMES = {
    "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1", "q8_0": "Q8_0", "q8_1": "Q8_1",
    "q2k": "Q2_K", "q3k": "Q3_K", "q4k": "Q4_K", "q5k": "Q5_K", "q6k": "Q6_K", "q8k": "Q8_K",
}
AFQ_NAMES = {"afq2": 2, "afq3": 3, "afq4": 4, "afq6": 6, "afq8": 8}
AFQ_GROUP_SIZE = 32  # finer than MLX's default 64: +0.5 bit per weight, clearly more accurate on small models
# mistral.rs names we recognise but do not run (yet): refused with the list of what we do.
NOT_RUN_HERE = ("hqq4", "hqq8", "fp8", "f8q8", "mxfp4")

# What `--isq N` means on each backend (mistral.rs: Metal gets AFQ, CUDA and CPU get K-quants).
LEVELS = {
    "mlx": {2: "afq2", 3: "afq3", 4: "afq4", 5: "q5k", 6: "afq6", 8: "afq8"},
    "torch": {2: "q2k", 3: "q3k", 4: "q4k", 5: "q5k", 6: "q6k", 8: "q8_0"},
}

# The per-tensor fallback when a K-quant's 256-wide super-blocks do not divide a row. llama.cpp and
# mistral.rs (after candle) agree except on q4k: llama.cpp takes q5_0, mistral.rs q4_1. Both are
# tried and the one that reproduces the tensor better is kept (`TensorPlan.alternatives`): q5_0's
# extra bit wins on ordinary weights, but weights that already sit on a 4-bit affine grid (a
# checkpoint converted from a Q4_1 GGUF, as SmolLM2's fixture is) are exact in q4_1 and only gain
# noise in q5_0: +20 % perplexity on that fixture against +0.3 % with q4_1.
K_QUANT_FALLBACK = {"q2k": ("q4_0",), "q3k": ("q4_0",), "q4k": ("q5_0", "q4_1"), "q5k": ("q5_1",),
                    "q6k": ("q8_0",), "q8k": ("q8_0",)}
# The output head's promotion (mistral.rs' "sensitive tensors").
HEAD_PROMOTION = {
    "q2k": "q6k", "q3k": "q6k", "q4k": "q6k", "q4_0": "q6k", "q4_1": "q6k",
    "q5k": "q8_0", "q6k": "q8_0", "q8k": "q8_0", "q5_0": "q8_0", "q5_1": "q8_0", "q8_0": "q8_0", "q8_1": "q8_0",
    "afq2": "afq6", "afq3": "afq6", "afq4": "afq6", "afq6": "afq8", "afq8": "afq8",
}


def valid_names() -> list[str]:
    return [*GGML_NAMES, *AFQ_NAMES, *(str(n) for n in LEVELS["torch"])]


@dataclass(frozen=True)
class IsqType:
    name: str  # as the user writes it: "q4k", "afq4"

    @property
    def ggml_kind(self) -> str | None:
        return GGML_NAMES.get(self.name)

    @property
    def afq_bits(self) -> int | None:
        return AFQ_NAMES.get(self.name)

    def block_width(self) -> int:
        return AFQ_GROUP_SIZE if self.afq_bits else ggml_blocks.block_size(self.ggml_kind)

    def fits(self, in_features: int) -> bool:
        return in_features % self.block_width() == 0

    def bits_per_weight(self) -> float:
        if self.afq_bits:
            return self.afq_bits + 32 / AFQ_GROUP_SIZE  # a 16-bit scale and bias per group
        return 8 * ggml_blocks.type_size(self.ggml_kind) / ggml_blocks.block_size(self.ggml_kind)

    def quantize(self, weight: np.ndarray, imatrix: np.ndarray | None = None) -> QuantizedTensor:
        """float (out, in) -> the quantized tensor (numpy, backend-free)."""
        w = np.ascontiguousarray(weight, dtype=np.float32)
        if self.afq_bits:
            from . import afq

            return afq.quantize(w, self.afq_bits, AFQ_GROUP_SIZE)
        if imatrix is not None and self.ggml_kind not in ggml_blocks.IMATRIX_KINDS:
            imatrix = None  # importance weighting exists for the K-quants of IMATRIX_KINDS only
        return GgmlTensor(self.ggml_kind, w.shape, ggml_blocks.quantize(w, self.ggml_kind, imatrix))


def parse_isq(value: str | int, backend: str) -> IsqType:
    """The type `--isq value` names on `backend` ("torch" or "mlx")."""
    text = str(value).strip().lower()
    if text.isdigit() and int(text) in LEVELS["torch"]:
        return IsqType(LEVELS[backend][int(text)])
    if text in GGML_NAMES or text in AFQ_NAMES:
        return IsqType(text)
    if text in NOT_RUN_HERE:
        raise UserError(f"--isq {text} is a mistral.rs type that this implementation does not run on any "
                        f"backend yet; use one of: {', '.join(valid_names())}.", param="isq")
    raise UserError(f"Unknown --isq type `{value}`. Valid types: {', '.join(valid_names())} "
                    "(the numbers pick each backend's best type of that many bits).", param="isq")


@dataclass
class TensorPlan:
    """What one checkpoint tensor becomes: `target` None keeps it unquantized."""

    target: IsqType | None
    note: str | None = None  # a fallback worth telling the user about
    alternatives: tuple[IsqType, ...] = ()  # also tried; the closest to the weight wins (see K_QUANT_FALLBACK)


def plan_tensor(isq: IsqType, in_features: int, *, is_head: bool) -> TensorPlan:
    wanted = IsqType(HEAD_PROMOTION[isq.name]) if is_head else isq
    if wanted.fits(in_features):
        return TensorPlan(wanted)
    fallbacks = [IsqType(name) for name in K_QUANT_FALLBACK.get(wanted.name, ())]
    fallbacks = [t for t in fallbacks if t.fits(in_features)]
    if fallbacks:
        names = " or ".join(t.name for t in fallbacks)
        closest = ", whichever reproduces each tensor better" if len(fallbacks) > 1 else ""
        return TensorPlan(fallbacks[0], f"{wanted.name} needs rows divisible by 256; rows of {in_features} "
                                        f"use {names} instead{closest}", tuple(fallbacks[1:]))
    return TensorPlan(None, f"{wanted.name} cannot store rows of {in_features}; they stay unquantized")
