"""Quantized weight matrices as plain numpy data, independent of any backend.

These are what in-situ quantization produces, what GGUF and UQFF files hold, and
what a backend packs into its own kernel layout (`Ops.prepare_quantized_linear`).
Keeping them backend-free is what lets a file written on torch load on MLX.

    GgmlTensor  rows of ggml blocks (Q4_0 ... Q8_K), byte-identical to GGUF tensor data
    AfqTensor   MLX-style affine groups: w = bias + q * scale per group of `group_size`
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mistralrs.errors import UserError

from . import ggml_blocks


@dataclass(frozen=True, eq=False)
class GgmlTensor:
    kind: str  # ggml type name as in ggml_blocks.KINDS, e.g. "Q4_K"
    shape: tuple[int, int]  # logical (out_features, in_features)
    data: np.ndarray  # uint8 (out_features, row_bytes(kind, in_features))

    def __post_init__(self):
        rows, cols = self.shape
        expected = (rows, ggml_blocks.row_bytes(self.kind, cols))
        if tuple(self.data.shape) != expected or self.data.dtype != np.uint8:
            raise UserError(f"{self.kind} data for a {self.shape} matrix must be uint8 {expected}, "
                            f"got {self.data.dtype} {tuple(self.data.shape)}.")

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    @property
    def label(self) -> str:
        return self.kind

    def dequantize(self) -> np.ndarray:
        """float32 (out, in), exactly ggml's dequantizer."""
        return ggml_blocks.dequantize(self.data, self.kind, self.shape[1])


@dataclass(frozen=True, eq=False)
class AfqTensor:
    bits: int  # 2, 3, 4, 5, 6 or 8
    group_size: int  # 32, 64 or 128
    shape: tuple[int, int]  # logical (out_features, in_features)
    weight: np.ndarray  # uint32 (out, in * bits / 32), MLX's packing
    scales: np.ndarray  # float32 (out, in / group_size)
    biases: np.ndarray  # float32 (out, in / group_size)

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes + self.scales.nbytes + self.biases.nbytes

    @property
    def label(self) -> str:
        return f"AFQ{self.bits}"

    def dequantize(self) -> np.ndarray:
        """float32 (out, in): bias + q * scale for every group."""
        rows, cols = self.shape
        q = unpack_bits(self.weight, self.bits, cols).astype(np.float32)
        groups = q.reshape(rows, cols // self.group_size, self.group_size)
        out = groups * self.scales[..., None] + self.biases[..., None]
        return out.reshape(rows, cols)


QuantizedTensor = GgmlTensor | AfqTensor


def unpack_bits(packed: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """uint32 rows holding `bits`-wide values LSB-first (straddling words) -> uint8 (rows, cols)."""
    rows = packed.shape[0]
    as_bits = np.unpackbits(np.ascontiguousarray(packed, dtype="<u4").view(np.uint8), axis=1, bitorder="little")
    values = as_bits[:, : cols * bits].reshape(rows, cols, bits)
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (values.astype(np.uint16) @ weights).astype(np.uint8)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of `unpack_bits`: uint8 (rows, cols) with values < 2**bits -> uint32 (rows, cols*bits/32)."""
    rows, cols = values.shape
    if (cols * bits) % 32:
        raise UserError(f"{cols} values of {bits} bits do not fill whole 32-bit words.")
    as_bits = np.unpackbits(values.astype(np.uint8)[..., None], axis=2, bitorder="little")[..., :bits]
    packed = np.packbits(as_bits.reshape(rows, cols * bits), axis=1, bitorder="little")
    return packed.view("<u4").astype(np.uint32)


def concat_rows(parts: list[QuantizedTensor]) -> QuantizedTensor | None:
    """One tensor whose rows are the parts' rows in order (fusing q/k/v), or None when the
    parts are not the same format (then the caller keeps them apart)."""
    first = parts[0]
    cols = first.shape[1]
    if any(type(p) is not type(first) or p.shape[1] != cols for p in parts):
        return None
    rows = sum(p.shape[0] for p in parts)
    if isinstance(first, GgmlTensor):
        if any(p.kind != first.kind for p in parts):
            return None
        return GgmlTensor(first.kind, (rows, cols), np.concatenate([p.data for p in parts]))
    if any((p.bits, p.group_size) != (first.bits, first.group_size) for p in parts):
        return None
    return AfqTensor(first.bits, first.group_size, (rows, cols),
                     np.concatenate([p.weight for p in parts]),
                     np.concatenate([p.scales for p in parts]),
                     np.concatenate([p.biases for p in parts]))
