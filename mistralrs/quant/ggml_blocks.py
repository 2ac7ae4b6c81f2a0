"""GGML block formats in numpy: quantize / dequantize rows with ggml's exact byte layout.

    quantize(w, "Q4_K")            float32 (rows, cols) -> uint8 (rows, row_bytes("Q4_K", cols))
    dequantize(data, "Q4_K", cols) uint8 (rows, row_bytes) -> float32 (rows, cols)

The work is done per format family in `ggml_legacy` (32-element blocks) and `ggml_kquants`
(256-element super-blocks). Both follow ggml-quants.c operation by operation, so the bytes
match ggml's reference quantizers and the floats match its dequantizers (and gguf-py's).
Q8_1 and Q8_K are ggml's activation-side formats; they are here for the CPU dot-product
kernels and never appear in model files.
"""

from __future__ import annotations

import numpy as np

from mistralrs.errors import UserError

from . import ggml_kquants, ggml_legacy

# kind -> (elements per block, bytes per block), as in ggml-common.h. (gguf-py lists Q8_1 as
# 40 bytes; ggml's static_assert says 2 halves + 32 int8 = 36, and ggml is the truth.)
_SIZES: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q8_1": (32, 36),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
    "Q8_K": (256, 292),
}
KINDS: tuple[str, ...] = tuple(_SIZES)

_QUANTIZE = {**ggml_legacy.QUANTIZE, **ggml_kquants.QUANTIZE}
_DEQUANTIZE = {**ggml_legacy.DEQUANTIZE, **ggml_kquants.DEQUANTIZE}
IMATRIX_KINDS: tuple[str, ...] = ("Q4_K", "Q5_K")

# Blocks are independent, so big matrices are processed a slice at a time: the scale
# searches make a dozen temporaries the size of the slice, and this keeps them cache-sized.
_CHUNK_ELEMENTS = 1 << 15


def _kind(kind: str) -> str:
    name = str(kind).upper()
    if name not in _SIZES:
        raise UserError(f"Unknown GGML quantization kind {kind!r}; expected one of {', '.join(KINDS)}.")
    return name


def block_size(kind: str) -> int:
    """Elements per block (32, or 256 for the K-quants)."""
    return _SIZES[_kind(kind)][0]


def type_size(kind: str) -> int:
    """Bytes per block."""
    return _SIZES[_kind(kind)][1]


def row_bytes(kind: str, cols: int) -> int:
    """Bytes of one quantized row of `cols` elements; `cols` must be a whole number of blocks."""
    bs, ts = _SIZES[_kind(kind)]
    if cols <= 0 or cols % bs:
        raise UserError(
            f"A row of {cols} elements cannot be stored as {_kind(kind)}: its rows must be a positive "
            f"multiple of {bs} elements. Pick another format for this tensor or leave it unquantized."
        )
    return cols // bs * ts


def _map_blocks(fn, blocks: np.ndarray, per_chunk: int, qw: np.ndarray | None = None) -> np.ndarray:
    def run(i):
        part = blocks[i : i + per_chunk]
        return fn(part) if qw is None else fn(part, qw[i : i + per_chunk])

    if len(blocks) <= per_chunk:
        return run(0)
    return np.concatenate([run(i) for i in range(0, len(blocks), per_chunk)])


def quantize(weights: np.ndarray, kind: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize float rows (rows, cols) to uint8 (rows, row_bytes(kind, cols)).

    Without `imatrix` this is ggml's reference quantizer (`quantize_row_*_ref`). With one
    (per-column importance, shape (cols,), as llama-imatrix writes it) it is ggml's
    importance-weighted search (`quantize_row_*_impl`); ported for IMATRIX_KINDS only.
    """
    name = _kind(kind)
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim != 2:
        raise UserError(f"quantize expects a 2-D (rows, cols) matrix, got shape {w.shape}.")
    rows, cols = w.shape
    nbytes = row_bytes(name, cols)
    bs = _SIZES[name][0]
    blocks = np.ascontiguousarray(w).reshape(-1, bs)
    qw = None
    if imatrix is not None:
        if name not in IMATRIX_KINDS:
            raise UserError(
                f"Importance-matrix (imatrix) quantization is implemented for {', '.join(IMATRIX_KINDS)}, "
                f"not {name}; quantize {name} without an imatrix."
            )
        im = np.asarray(imatrix, dtype=np.float32)
        if im.shape != (cols,):
            raise UserError(
                f"The imatrix for a ({rows}, {cols}) matrix must have shape ({cols},), got {im.shape}."
            )
        # The same per-column importance applies to every row.
        qw = np.broadcast_to(im.reshape(1, -1, bs), (rows, cols // bs, bs)).reshape(-1, bs)
    # The K-quant quantizers slice large inputs themselves (ggml_kquants.CHUNK_BLOCKS) and run
    # the slices on a thread pool; small slices from here would only add numpy call overhead.
    per_chunk = len(blocks) if name in ggml_kquants.QUANTIZE else _CHUNK_ELEMENTS // bs
    out = _map_blocks(_QUANTIZE[name], blocks, max(1, per_chunk), qw)
    return out.reshape(rows, nbytes)


def dequantize(data: np.ndarray, kind: str, cols: int) -> np.ndarray:
    """Inverse of `quantize`: uint8 (rows, row_bytes(kind, cols)) -> float32 (rows, cols)."""
    name = _kind(kind)
    nbytes = row_bytes(name, cols)
    raw = np.ascontiguousarray(data).view(np.uint8)
    if raw.size % nbytes:
        raise UserError(
            f"{name} data of {raw.size} bytes is not a whole number of {cols}-element rows ({nbytes} bytes each)."
        )
    bs, ts = _SIZES[name]
    blocks = raw.reshape(-1, ts)
    out = _map_blocks(_DEQUANTIZE[name], blocks, max(1, (_CHUNK_ELEMENTS * 4) // bs))
    return out.reshape(-1, cols)
