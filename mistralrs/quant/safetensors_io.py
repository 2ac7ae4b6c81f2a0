"""A small, strict safetensors reader/writer in numpy (BF16 included, no torch needed).

The `safetensors` package cannot hand numpy a BF16 tensor, and UQFF files hold BF16 scales
and weights; so UQFF does its own (simple) container I/O:

    file   = u64 LE header length N | N bytes of JSON header | data
    header = {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [b, e]}}

`write_file` writes what the safetensors crate writes: header padded with spaces to a
multiple of 8 bytes, tensors ordered by dtype (the crate's enum order, widest first) then
name, so every tensor is aligned. `SafetensorsFile` validates a file as strictly as the
crate does (offsets contiguous and covering the data exactly, sizes matching shapes) and
memory-maps it; every problem is a `UserError` naming the file.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mistralrs.errors import UserError

# safetensors dtype -> numpy storage dtype (BF16 is kept as its uint16 bit pattern).
NUMPY_STORAGE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "F8_E4M3": np.dtype(np.uint8),
    "F8_E5M2": np.dtype(np.uint8),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
    "F64": np.dtype("<f8"),
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")

# The safetensors crate's `Dtype` enum order; it sorts tensors by this, descending.
_ENUM_ORDER = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
               "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]
_RANK = {name: i for i, name in enumerate(_ENUM_ORDER)}

_MAX_HEADER = 100_000_000  # the crate's limit


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    begin: int  # byte offsets within the data section
    end: int


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch and MLX do (NaN stays NaN)."""
    from .afq import round_to_bfloat16

    return (round_to_bfloat16(np.asarray(x, dtype=np.float32)).view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def _header_json(entries: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str] | None):
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return raw, offset


def write_file(path: str | os.PathLike, tensors: dict[str, tuple[str, np.ndarray]],
               metadata: dict[str, str] | None = None) -> int:
    """Write {name: (safetensors dtype, numpy storage array)}; returns the file size.

    The array must already hold the stored bytes (uint16 bit patterns for BF16)."""
    items = []
    for name, (dtype, arr) in tensors.items():
        if dtype not in NUMPY_STORAGE:
            raise ValueError(f"unsupported safetensors dtype {dtype}")
        arr = np.asarray(arr)
        if not arr.flags.c_contiguous:  # (np.ascontiguousarray would make scalars 1-D)
            arr = arr.copy(order="C")
        if arr.dtype.itemsize != NUMPY_STORAGE[dtype].itemsize:
            raise ValueError(f"{name}: {arr.dtype} storage does not fit dtype {dtype}")
        items.append((name, dtype, arr))
    items.sort(key=lambda it: (-_RANK[it[1]], it[0]))
    header, total = _header_json([(n, d, a.shape, a.nbytes) for n, d, a in items], metadata)
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for _, _, arr in items:
            if arr.nbytes:
                f.write(memoryview(arr.astype(arr.dtype.newbyteorder("<"), copy=False)).cast("B"))
    os.replace(tmp, path)
    return 8 + len(header) + total


def entry_bytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * NUMPY_STORAGE[dtype].itemsize


class SafetensorsFile:
    """A validated, memory-mapped safetensors file."""

    def __init__(self, path: str | os.PathLike, what: str = "safetensors file"):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{what} {self.path} does not exist.")
        size = self.path.stat().st_size
        bad = f"{self.path} is not a valid {what}"
        if size < 8:
            raise UserError(f"{bad}: it is only {size} bytes long (truncated or empty). Re-create or re-download it.")
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > _MAX_HEADER or 8 + n > size:
                raise UserError(
                    f"{bad}: its header claims {n} bytes but the file has {size - 8} after the length "
                    f"field (truncated, or not a safetensors file). Re-create or re-download it."
                )
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{bad}: its header is not valid JSON ({e}). Re-create or re-download it.") from None
        if not isinstance(header, dict):
            raise UserError(f"{bad}: its header is not a JSON object.")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict):
            raise UserError(f"{bad}: __metadata__ is not an object of strings.")
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in meta.items()}
        self.data_start = 8 + n
        data_len = size - self.data_start
        entries = []
        for name, info in header.items():
            try:
                dtype = info["dtype"]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{bad}: the header entry for {name!r} is malformed.") from None
            if dtype not in NUMPY_STORAGE:
                raise UserError(f"{bad}: tensor {name!r} has dtype {dtype}, which mistralrs cannot read.")
            if any(d < 0 for d in shape) or end - begin != entry_bytes(shape, dtype):
                raise UserError(f"{bad}: tensor {name!r} ({dtype} {list(shape)}) does not match its "
                                f"byte range {begin}..{end}.")
            entries.append(Entry(name, dtype, shape, begin, end))
        expected = 0
        for e in sorted(entries, key=lambda e: (e.begin, e.end)):
            if e.begin != expected:
                raise UserError(f"{bad}: tensor {e.name!r} starts at byte {e.begin}, expected {expected} "
                                f"(overlapping or gapped data).")
            expected = e.end
        if expected > data_len:
            raise UserError(
                f"{bad}: it is truncated: the header describes {expected} bytes of tensor data but only "
                f"{data_len} follow it. Re-create or re-download the file."
            )
        if expected < data_len:
            raise UserError(f"{bad}: {data_len - expected} bytes follow the last tensor (a damaged file). "
                            f"Re-create or re-download it.")
        self.entries: dict[str, Entry] = {e.name: e for e in entries}
        self._map: np.memmap | None = None

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def keys(self):
        return self.entries.keys()

    def raw(self, name: str) -> np.ndarray:
        """The stored array (BF16 as uint16 bits), a read-only view of the mapped file."""
        e = self.entries[name]
        dt = NUMPY_STORAGE[e.dtype]
        if e.end == e.begin:
            return np.zeros(e.shape, dtype=dt)
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        view = self._map[self.data_start + e.begin : self.data_start + e.end]
        return np.asarray(view).view(dt).reshape(e.shape)

    def array(self, name: str) -> np.ndarray:
        """The tensor as numpy: BF16 widened to float32 (exactly), F16/F32 as stored."""
        e = self.entries[name]
        a = self.raw(name)
        return bf16_bits_to_float32(a) if e.dtype == "BF16" else a

    def close(self) -> None:
        self._map = None
