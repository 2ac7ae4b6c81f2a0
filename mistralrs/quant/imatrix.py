"""Importance matrices (imatrix): llama.cpp's files, and computing one from calibration text.

An imatrix holds, for every weight matrix, the mean of x**2 over the activations x
that reach each of its input columns. Quantizers weight their error by it, so
the columns that carry the most signal are kept most precisely.

Two llama.cpp file formats are read:
- the legacy binary (`llama-imatrix` before mid-2025, `.dat`/`.imatrix`): int32 entry
  count; per entry an int32-prefixed name, int32 ncall, int32 nval and nval float32
  values that hold mean * ncall; then trailing chunk count and dataset name;
- the GGUF format (`general.type = imatrix`): per matrix `<name>.in_sum2` (sums of
  x**2) and `<name>.counts` (how many rows were summed).
Entry names are llama.cpp's tensor names (`blk.0.attn_q.weight`); they are mapped to
the checkpoint's names. Names that already are checkpoint names are kept.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from mistralrs.errors import UserError

# Which llama.cpp naming each of our architectures uses (llama.cpp converts Mistral as llama).
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3",
             "phi3": "phi3"}


def _bad(path: Path, problem: str) -> UserError:
    return UserError(f"{path} is not a usable imatrix file: {problem}. Give a file written by llama.cpp's "
                     "llama-imatrix (legacy .dat or GGUF), or compute one with --calibration-file.",
                     param="imatrix")


def read_imatrix(path: str | Path, architecture: str) -> dict[str, np.ndarray]:
    """{checkpoint weight name: per-input-column importance (float32)}."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"Cannot read the imatrix file {path}: {exc.strerror or exc}.", param="imatrix") from None
    raw = _read_gguf(path) if data[:4] == b"GGUF" else _read_legacy(path, data)
    if not raw:
        raise _bad(path, "it holds no entries")
    from mistralrs.engine.gguf_file import hf_tensor_name

    mapped = {}
    for name, values in raw.items():
        hf = name if name.startswith(("model.", "lm_head.")) else hf_tensor_name(GGUF_ARCH[architecture], name)
        if hf is not None:
            mapped[hf] = values
    if not mapped:
        raise _bad(path, f"none of its entries (e.g. {next(iter(raw))}) names a weight of a {architecture} model")
    return mapped


def _read_legacy(path: Path, data: bytes) -> dict[str, np.ndarray]:
    entries: dict[str, np.ndarray] = {}
    try:
        (count,) = struct.unpack_from("<i", data, 0)
        if count <= 0 or count > 1_000_000:
            raise _bad(path, f"its header claims {count} entries")
        offset = 4
        for _ in range(count):
            (length,) = struct.unpack_from("<i", data, offset)
            if not 0 < length < 4096:
                raise _bad(path, f"an entry name at byte {offset} has length {length}")
            name = data[offset + 4 : offset + 4 + length].decode("utf-8")
            offset += 4 + length
            ncall, nval = struct.unpack_from("<ii", data, offset)
            offset += 8
            if nval <= 0 or offset + 4 * nval > len(data):
                raise _bad(path, f"entry {name} claims {nval} values, past the end of the file")
            values = np.frombuffer(data, dtype="<f4", count=nval, offset=offset).astype(np.float32)
            offset += 4 * nval
            entries[name] = values / ncall if ncall > 0 else values
    except (struct.error, UnicodeDecodeError):
        raise _bad(path, "it is truncated or not in llama.cpp's legacy imatrix format") from None
    return entries


def _read_gguf(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # gguf raises assorted errors for damaged files
        raise _bad(path, f"its GGUF structure cannot be read ({exc})") from None
    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    entries = {}
    for name, sums in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        counts = tensors.get(base + ".counts")
        if counts is None:
            raise _bad(path, f"{base} has in_sum2 but no counts")
        # Dense matrices have one count; stacked experts one per expert (averaged here).
        per_matrix = sums.reshape(counts.size, -1) / np.maximum(counts.reshape(-1, 1), 1)
        entries[base] = per_matrix.mean(axis=0).astype(np.float32)
    return entries


def write_legacy_imatrix(path: str | Path, entries: dict[str, np.ndarray], ncall: int = 1) -> None:
    """Write llama.cpp's legacy format (values stored as mean * ncall), e.g. for tests and tools."""
    out = bytearray(struct.pack("<i", len(entries)))
    for name, values in entries.items():
        encoded = name.encode("utf-8")
        out += struct.pack("<i", len(encoded)) + encoded + struct.pack("<ii", ncall, len(values))
        out += (np.asarray(values, dtype="<f4") * ncall).tobytes()
    out += struct.pack("<i", ncall) + struct.pack("<i", 0)
    Path(path).write_bytes(bytes(out))
