"""UQFF 1.2 files: write and read mistral.rs's pre-quantized weight format.

A UQFF export is a folder holding one shard set per quantization type (`q4k-0.uqff`,
`q4k-1.uqff`, ...), `residual.safetensors` with every tensor that is not a quantized layer,
and `uqff_report.json`. Every shard is a plain safetensors file; a layer `<key>` (the HF
module path without `.weight`, e.g. `model.layers.0.self_attn.q_proj`) is a handful of
tensors `<key>.weight*` plus an optional `<key>.bias`, self-described by the U8 scalar
`<key>.weight.format`. See docs/uqff.md for the full layout.

    write_uqff("out/q4k", {key: GgmlTensor | AfqTensor | ndarray}, biases)  -> shard paths
        (layers may also be a lazy iterable of (key, tensor) pairs; shapes= for stacked experts)
    write_residual("out", {hf_name: ndarray})                                -> path
    write_report("out", [report_output("q4k", shards, layers)])             -> path
    reader = open_uqff("out/q4k-0.uqff;out/afq8-0.uqff")                    -> UqffReader
    reader.layer(key) -> UqffLayer(weight=GgmlTensor | AfqTensor | ndarray, bias=...)
    check_model_shapes(reader, {key: (out, in)})

We read and write the Gguf (ggml blocks), Afq (MLX affine) and Unquant (dense) layer
formats; files holding HQQ, FP8, F8Q8 or MXFP4 layers are refused with a clear message.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from mistralrs.errors import UserError

from . import afq as afq_mod
from . import ggml_blocks
from .qtensor import AfqTensor, GgmlTensor, QuantizedTensor
from .safetensors_io import (
    FLOAT_DTYPES,
    SafetensorsFile,
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    write_file,
)

VERSION: tuple[int, int, int] = (1, 2, 0)
VERSION_KEYS = ("uqff.version.major", "uqff.version.minor", "uqff.version.patch")
MAX_SHARD_BYTES = 10 * 1024**3  # mistral.rs's MAX_UQFF_SIZE_BYTES
RESIDUAL_NAME = "residual.safetensors"
REPORT_NAME = "uqff_report.json"
PRODUCER = "mistralrs-py"

# QuantizedSerdeType codes (`<key>.weight.format`).
FORMAT_CODES = {"gguf": 0, "unquant": 1, "hqq": 2, "fp8": 3, "afq": 4, "f8q8": 5, "mxfp4": 6}
FORMAT_NAMES = {code: name for name, code in FORMAT_CODES.items()}
_READABLE = ("gguf", "unquant", "afq")

# The exact set of `<key>.`-suffixes each readable format has (besides an optional `bias`).
_SUFFIXES = {
    "gguf": {"weight", "weight.format", "weight.dtype", "weight.shape"},
    "unquant": {"weight", "weight.format"},
    "afq": {"weight", "weight.format", "weight.scales", "weight.biases", "weight.bits", "weight.group_size"},
}
# Every suffix any UQFF 1.x format uses, longest first so `weight.scales` wins over `weight`.
_ALL_SUFFIXES = sorted(
    {"weight", "weight.format", "weight.dtype", "weight.shape", "weight.scales", "weight.biases", "weight.bits",
     "weight.group_size", "weight.zeros", "weight.axis", "weight.optimization_steps", "weight.round_zeros",
     "weight.channel_wise", "weight.dequant_w_scale", "weight.dequant_x_scale", "weight.quant_scale",
     "weight.num_blocks", "bias"},
    key=len, reverse=True,
)  # fmt: skip

# ggml type ids a Gguf entry may carry: the dense ones and our block kinds.
_DENSE_GGML = {"F32": "F32", "F16": "F16", "BF16": "BF16"}
GGML_TYPE_IDS: dict[str, int] = {name: int(GGMLQuantizationType[name]) for name in (*_DENSE_GGML, *ggml_blocks.KINDS)}
_GGML_BY_ID = {v: k for k, v in GGML_TYPE_IDS.items()}

_DTYPE_ALIASES = {
    "f32": "F32", "float32": "F32", "f16": "F16", "float16": "F16", "half": "F16",
    "bf16": "BF16", "bfloat16": "BF16",
}  # fmt: skip


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("mistralrs-py")
    except Exception:  # not installed as a distribution (e.g. run from a checkout)
        return "unknown"


def _metadata() -> dict[str, str]:
    return {
        "uqff.producer": PRODUCER,
        "uqff.version": ".".join(map(str, VERSION)),
        f"uqff.producer.{PRODUCER}.version": _package_version(),
    }


# ----------------------------------------------------------------------------- writing


def _dtype_name(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    name = _DTYPE_ALIASES.get(str(dtype).lower())
    if name is None:
        raise UserError(f"Unknown float dtype {dtype!r}; use bf16, f16 or f32.")
    return name


def _float_storage(arrays: Sequence[np.ndarray], dtype: str | None) -> tuple[str, list[np.ndarray]]:
    """Pick a safetensors float dtype for `arrays` and encode them.

    dtype None: float16 arrays stay F16; otherwise the narrowest of BF16, F16, F32 that holds
    every value exactly (so a write/read round trip is bit-identical). An explicit dtype
    rounds to it (nearest even)."""
    arrays = [np.asarray(a) for a in arrays]
    for a in arrays:
        if a.dtype.kind != "f":
            raise UserError(f"Expected a floating-point array, got {a.dtype}.")
    if dtype is None:
        if all(a.dtype == np.float16 for a in arrays):
            dtype = "F16"
        else:
            f32 = [a.astype(np.float32) for a in arrays]
            if all(np.array_equal(afq_mod.round_to_bfloat16(a), a, equal_nan=True) for a in f32):
                dtype = "BF16"
            elif all(np.array_equal(a.astype(np.float16).astype(np.float32), a, equal_nan=True) for a in f32):
                dtype = "F16"
            else:
                dtype = "F32"
    if dtype == "BF16":
        return dtype, [float32_to_bf16_bits(a.astype(np.float32)) for a in arrays]
    np_dtype = np.float16 if dtype == "F16" else np.float32
    return dtype, [a.astype(np_dtype) for a in arrays]


def _u8(value: int) -> tuple[str, np.ndarray]:
    return "U8", np.array(value, dtype=np.uint8).reshape(())


def _u32(value: int) -> tuple[str, np.ndarray]:
    return "U32", np.array(value, dtype="<u4").reshape(())


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key or key.startswith(".") or key.endswith("."):
        raise UserError(f"{key!r} is not a layer key; use the module path, e.g. model.layers.0.self_attn.q_proj.")
    if key.endswith(".weight") or key.endswith(".bias"):
        raise UserError(f"Layer key {key!r} must be the module path without .weight/.bias "
                        f"(e.g. {key.rsplit('.', 1)[0]}).")
    if key.split(".", 2)[:2] == ["uqff", "version"]:
        raise UserError(f"Layer key {key!r} collides with the UQFF version tensors.")


def _stacked(key: str, value, shape) -> tuple[int, ...]:
    """The logical shape to record: the tensor's own, or (E, out, in) for stacked experts."""
    if shape is None:
        return tuple(value.shape)
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or shape[0] * shape[1] != value.shape[0] or shape[2] != value.shape[1]:
        raise UserError(f"{key}: stacked shape {shape} does not match a tensor of shape {tuple(value.shape)} "
                        f"(expected (E, out, in) with E*out rows).")
    return shape


def _layer_tensors(key: str, value, bias, dtype: str | None, shape=None) -> dict[str, tuple[str, np.ndarray]]:
    _check_key(key)
    out: dict[str, tuple[str, np.ndarray]] = {}
    if shape is not None and not isinstance(value, (GgmlTensor, AfqTensor)):
        raise UserError(f"{key}: a stacked shape is only needed for GgmlTensor/AfqTensor layers; pass dense "
                        f"experts as a 3-D array.")
    if isinstance(value, GgmlTensor):
        logical = _stacked(key, value, shape)
        out[f"{key}.weight"] = ("U8", np.ascontiguousarray(value.data).reshape(-1))
        out[f"{key}.weight.dtype"] = _u32(GGML_TYPE_IDS[value.kind])
        out[f"{key}.weight.shape"] = ("U32", np.array(logical, dtype="<u4"))
        out[f"{key}.weight.format"] = _u8(FORMAT_CODES["gguf"])
    elif isinstance(value, AfqTensor):
        logical = _stacked(key, value, shape)
        rows, cols = value.shape
        afq_mod.check_params(value.bits, value.group_size, cols)
        packed = (rows, cols * value.bits // 32)
        groups = (rows, cols // value.group_size)
        w = np.asarray(value.weight)
        if w.dtype != np.uint32 or w.shape != packed:
            raise UserError(f"{key}: AFQ{value.bits} weight must be uint32 {packed}, got {w.dtype} {w.shape}.")
        if np.shape(value.scales) != groups or np.shape(value.biases) != groups:
            raise UserError(f"{key}: AFQ scales and biases must be {groups}, got {np.shape(value.scales)} "
                            f"and {np.shape(value.biases)}.")
        st, (scales, biases) = _float_storage([value.scales, value.biases], dtype)
        lead = logical[:-1]
        w, scales, biases = w.reshape(*lead, -1), scales.reshape(*lead, -1), biases.reshape(*lead, -1)
        out[f"{key}.weight"] = ("U32", w.astype("<u4", copy=False))
        out[f"{key}.weight.scales"] = (st, scales)
        out[f"{key}.weight.biases"] = (st, biases)
        out[f"{key}.weight.bits"] = _u8(value.bits)
        out[f"{key}.weight.group_size"] = _u8(value.group_size)
        out[f"{key}.weight.format"] = _u8(FORMAT_CODES["afq"])
    elif isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.ndim >= 1:
        logical = tuple(value.shape)
        st, (w,) = _float_storage([value], dtype)
        out[f"{key}.weight"] = (st, w)
        out[f"{key}.weight.format"] = _u8(FORMAT_CODES["unquant"])
    else:
        raise UserError(f"{key}: cannot store a {type(value).__name__} in UQFF; expected a GgmlTensor, an "
                        f"AfqTensor or a float numpy array.")
    if bias is not None:
        b = np.asarray(bias)
        allowed = {logical[:-1], logical[-2:-1]} if len(logical) >= 2 else {logical}
        if b.shape not in allowed:
            want = " or ".join(str(list(a)) for a in sorted(allowed, key=len))
            raise UserError(f"{key}: bias must have shape {want}, got {list(b.shape)}.")
        st, (b,) = _float_storage([b], dtype)
        out[f"{key}.bias"] = (st, b)
    return out


def shard_paths(path: str | os.PathLike) -> tuple[Path, str]:
    """(folder, stem) for a shard-set name: `out/q4k`, `out/q4k.uqff` or `out/q4k-0.uqff`."""
    p = Path(path)
    name = p.name
    if name.endswith(".uqff"):
        name = name[: -len(".uqff")]
        m = re.fullmatch(r"(.+)-(\d+)", name)
        if m:
            if int(m.group(2)) != 0:
                raise UserError(f"{p} names shard {m.group(2)}; name the set by its first shard "
                                f"({m.group(1)}-0.uqff) or its stem ({m.group(1)}).")
            name = m.group(1)
    if not name:
        raise UserError(f"{p} is not a UQFF shard-set name; use e.g. out/q4k or out/q4k-0.uqff.")
    return p.parent, name


def write_uqff(
    path: str | os.PathLike,
    layers: Mapping[str, QuantizedTensor | np.ndarray] | Iterable[tuple[str, QuantizedTensor | np.ndarray]],
    biases: Mapping[str, np.ndarray] | None = None,
    *,
    shard_limit: int = MAX_SHARD_BYTES,
    dtype: str | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> list[Path]:
    """Write one UQFF 1.2 shard set `<stem>-0.uqff`, `<stem>-1.uqff`, ...; returns the paths.

    `path` is the set's stem (`out/q4k`) or its first file (`out/q4k-0.uqff`, `out/q4k.uqff`).
    `layers` maps module paths to GgmlTensor (Gguf entries), AfqTensor (Afq entries) or float
    arrays (Unquant entries); it may also be an iterable of (key, tensor) pairs, consumed
    lazily, so a quantizer can stream layers through without holding them all. `biases` maps
    some of the same keys to 1-D float arrays. `shapes` gives the logical shape of stacked
    MoE experts, (E, out, in), for tensors passed with E*out rows.

    Layers are written in order; a shard is closed before a layer that would take it past
    `shard_limit` bytes (a layer is never split), so memory use is about one shard. `dtype`
    (bf16, f16, f32) is the float dtype for AFQ scales/biases, dense weights and biases; None
    stores each losslessly in the narrowest of BF16, F16, F32. The set appears only when
    complete; stale higher-numbered shards of the same stem are removed.
    """
    folder, stem = shard_paths(path)
    if not folder.is_dir():
        raise UserError(f"Cannot write {stem}-0.uqff: folder {folder} does not exist.")
    if shard_limit <= 0:
        raise UserError("The UQFF shard size limit must be positive.")
    biases = dict(biases or {})
    shapes = dict(shapes or {})
    dtype = _dtype_name(dtype)
    meta = _metadata()
    items = layers.items() if isinstance(layers, Mapping) else layers
    partial: list[Path] = []
    current: dict[str, tuple[str, np.ndarray]] = {
        name: _u32(value) for name, value in zip(VERSION_KEYS, VERSION, strict=True)
    }
    size = sum(a.nbytes for _, a in current.values())
    seen: set[str] = set()

    def flush():
        p = folder / f"{stem}-{len(partial)}.uqff.partial"
        partial.append(p)
        write_file(p, current, meta)

    try:
        for key, value in items:
            if key in seen:
                raise UserError(f"Layer {key} is given twice.")
            tensors = _layer_tensors(key, value, biases.get(key), dtype, shapes.get(key))
            nbytes = sum(a.nbytes for _, a in tensors.values())
            if seen and size + nbytes > shard_limit:
                flush()
                current, size = {}, 0
            seen.add(key)
            current.update(tensors)
            size += nbytes
        unknown = sorted(set(biases) - seen) + sorted(set(shapes) - seen)
        if unknown:
            raise UserError(f"Biases or shapes given for layers that are not being written: {', '.join(unknown[:5])}.")
        flush()
    except BaseException:
        for p in partial:
            p.unlink(missing_ok=True)
        raise
    paths = []
    for p in partial:
        final = p.with_name(p.name[: -len(".partial")])
        os.replace(p, final)
        paths.append(final)
    i = len(paths)
    while (folder / f"{stem}-{i}.uqff").exists():
        (folder / f"{stem}-{i}.uqff").unlink()
        i += 1
    return paths


def write_residual(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], *, dtype: str | None = None
) -> Path:
    """Write the tensors that are not UQFF layers (norms, unquantized embeddings, ...) under
    their HF names to `residual.safetensors` (`path` is the file or its folder). Float
    tensors are stored as `write_uqff` stores them; integer tensors as they are."""
    p = Path(path)
    if p.is_dir():
        p = p / RESIDUAL_NAME
    dtype = _dtype_name(dtype)
    encoded: dict[str, tuple[str, np.ndarray]] = {}
    ints = {np.dtype(t): n for n, t in (("U8", np.uint8), ("I8", np.int8), ("I16", "<i2"), ("U16", "<u2"),
                                         ("I32", "<i4"), ("U32", "<u4"), ("I64", "<i8"), ("U64", "<u8"),
                                         ("BOOL", np.bool_))}
    for name, value in tensors.items():
        a = np.asarray(value)
        if a.dtype.kind == "f":
            st, (a,) = _float_storage([a], dtype)
            encoded[name] = (st, a)
        elif a.dtype.newbyteorder("<") in ints:
            encoded[name] = (ints[a.dtype.newbyteorder("<")], a)
        else:
            raise UserError(f"Residual tensor {name} has dtype {a.dtype}, which safetensors cannot store.")
    write_file(p, encoded, _metadata())
    return p


def read_residual(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{HF name: array} from `residual.safetensors` (file or folder); memory-mapped, with BF16
    widened to float32."""
    p = Path(path)
    if p.is_dir():
        p = p / RESIDUAL_NAME
    f = SafetensorsFile(p, "UQFF residual file")
    return {name: f.array(name) for name in f.keys()}


# ----------------------------------------------------------------------------- report


def stored_label(value: QuantizedTensor | np.ndarray) -> str:
    """mistral.rs's name for how a layer is stored: q4k, q8_0, afq4, ... (dense: unquant)."""
    if isinstance(value, GgmlTensor):
        kind = value.kind.lower()
        return kind.replace("_k", "k") if kind.endswith("_k") else kind
    if isinstance(value, AfqTensor):
        return f"afq{value.bits}"
    return "unquant"


def report_output(
    quant: str,
    shards: Sequence[str | os.PathLike],
    layers: Mapping[str, QuantizedTensor | np.ndarray | tuple[str, Sequence[int]]],
    *,
    targets: Mapping[str, str] | None = None,
    fallbacks: Sequence[Mapping] = (),
) -> dict:
    """One `outputs[]` entry of uqff_report.json for a shard set written by `write_uqff`.

    `targets` gives the per-layer type that was asked for where it differs from `quant`
    (e.g. embeddings promoted to q6k); `fallbacks` are {module, from, to, shape, reason}."""
    targets = targets or {}
    details, counts = [], Counter()
    for key, value in layers.items():
        # A (label, shape) pair stands for a layer already written and no longer in memory.
        label, shape = (value[0], list(value[1])) if isinstance(value, tuple) else (stored_label(value),
                                                                                    list(value.shape))
        counts[label] += 1
        details.append({"module": key, "default_target": quant, "resolved_target": targets.get(key, quant),
                        "stored": label, "shape": shape})
    out = {"quant": quant, "shards": [Path(s).name for s in shards], "layers": len(details),
           "actual_counts": dict(sorted(counts.items())), "fallback_count": len(fallbacks)}
    if fallbacks:
        out["fallbacks"] = [dict(f) for f in fallbacks]
    out["layer_details"] = details
    return out


def write_report(
    folder: str | os.PathLike, outputs: Sequence[Mapping], *, base_model: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write `<folder>/uqff_report.json`; outputs of an existing report whose `quant` is not
    among `outputs` are kept (several runs may fill one folder)."""
    p = Path(folder) / REPORT_NAME
    kept = []
    if p.exists():
        try:
            old = json.loads(p.read_text())
            new_quants = {o["quant"] for o in outputs}
            kept = [o for o in old.get("outputs", []) if o.get("quant") not in new_quants]
        except (ValueError, AttributeError, TypeError, KeyError):
            kept = []
    report: dict = {
        "schema": 1,
        "generated_by": {"tool": f"{PRODUCER} quantize", "mistralrs_version": _package_version(),
                         "git_revision": "unknown"},
    }
    if base_model is not None:
        report["base_model"] = base_model
    if repo_id is not None:
        report["repo_id"] = repo_id
    report["uqff_version"] = ".".join(map(str, VERSION))
    report["outputs"] = kept + [dict(o) for o in outputs]
    p.write_text(json.dumps(report, indent=2) + "\n")
    return p


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class UqffLayer:
    key: str
    format: str  # "gguf", "afq" or "unquant"
    label: str  # how it is stored: "Q4_K", "Q8_0", "AFQ4", "F32", "BF16", ...
    shape: tuple[int, ...]  # logical shape, (out, in) or stacked experts (E, out, in)
    # GgmlTensor / AfqTensor with E*out rows for stacked experts; or a float array of `shape`
    # (BF16 widened to float32) for dense layers and F32/F16/BF16 Gguf entries.
    weight: QuantizedTensor | np.ndarray
    bias: np.ndarray | None
    file: Path  # the shard holding the weight


@dataclass(frozen=True)
class _LayerInfo:
    format: str
    label: str
    shape: tuple[int, ...]
    names: dict[str, int]  # suffix -> index of the shard holding `<key>.<suffix>`


def _natural(key: str) -> list:
    """Sort key putting model.layers.2 before model.layers.10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", key)]


def _split_name(name: str) -> tuple[str, str] | None:
    for suffix in _ALL_SUFFIXES:
        if name.endswith("." + suffix) and len(name) > len(suffix) + 1:
            return name[: -len(suffix) - 1], suffix
    return None


def _scalar(f: SafetensorsFile, name: str, dtype: str, what: str) -> int:
    e = f.entries[name]
    if e.dtype != dtype or e.shape not in ((), (1,)):
        raise UserError(f"{f.path} is a damaged UQFF file: {name} ({what}) must be a {dtype} scalar, "
                        f"got {e.dtype} {list(e.shape)}. Re-create the file.")
    return int(f.raw(name).reshape(-1)[0])


def _read_report_shards(first: Path) -> list[Path] | None:
    report = first.parent / REPORT_NAME
    if not report.is_file():
        return None
    try:
        data = json.loads(report.read_text())
        outputs = data["outputs"]
        for out in outputs:
            shards = [str(s) for s in out["shards"]]
            if first.name in shards:
                return [first.parent / s for s in shards]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{report} is not a valid UQFF report ({type(e).__name__}: {e}). Fix or delete it; "
                        f"the shards are then found by their -0, -1, ... numbering.") from None
    return None


def expand_shards(path: str | os.PathLike) -> list[Path]:
    """The files of the shard set `path` belongs to.

    `<stem>-0.uqff` brings in `<stem>-1.uqff`, `<stem>-2.uqff`, ... (all of them, contiguous),
    unless the folder's uqff_report.json lists the set's files, which then wins. A missing
    `<stem>.uqff` falls back to `<stem>-0.uqff` (the name mistral.rs was asked to write)."""
    p = Path(path)
    if not p.exists():
        alt = p.with_name(p.name[: -len(".uqff")] + "-0.uqff") if p.name.endswith(".uqff") else None
        if alt is not None and alt.exists():
            p = alt
        else:
            raise UserError(f"UQFF file {p} does not exist.")
    if p.is_dir():
        found = sorted(x.name for x in p.glob("*-0.uqff"))
        hint = f" It holds {', '.join(found)}; name one of them." if found else ""
        raise UserError(f"{p} is a folder; give the UQFF file to load (e.g. {p}/q4k-0.uqff).{hint}")
    listed = _read_report_shards(p)
    if listed is not None:
        missing = [str(x) for x in listed if not x.is_file()]
        if missing:
            raise UserError(f"{p.parent / REPORT_NAME} lists {', '.join(missing)} as part of the set of {p.name}, "
                            f"but {'it is' if len(missing) == 1 else 'they are'} missing. Copy the missing "
                            f"shard(s) into {p.parent} (a partial download?).")
        return listed
    m = re.fullmatch(r"(.+)-(\d+)\.uqff", p.name)
    if not m or int(m.group(2)) != 0:
        return [p]
    stem = m.group(1)
    numbers = set()
    for other in p.parent.glob(f"{_glob_escape(stem)}-*.uqff"):
        mm = re.fullmatch(re.escape(stem) + r"-(\d+)\.uqff", other.name)
        if mm:
            numbers.add(int(mm.group(1)))
    top = max(numbers)
    gaps = [n for n in range(top + 1) if n not in numbers]
    if gaps:
        names = ", ".join(f"{stem}-{n}.uqff" for n in gaps)
        raise UserError(f"The UQFF set {stem} in {p.parent} is incomplete: {names} "
                        f"{'is' if len(gaps) == 1 else 'are'} missing but {stem}-{top}.uqff exists. "
                        f"Copy the missing shard(s) (a partial download?).")
    return [p.parent / f"{stem}-{n}.uqff" for n in range(top + 1)]


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _split_spec(spec, base_dir: str | os.PathLike | None) -> list[Path]:
    if isinstance(spec, (str, os.PathLike)):
        items = [s.strip() for s in str(spec).split(";")]
    else:
        items = [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if not items:
        raise UserError("No UQFF file given; pass a file such as q4k-0.uqff (several separated by ';').")
    paths = []
    for item in items:
        p = Path(item).expanduser()
        if base_dir is not None and not p.is_absolute():
            p = Path(base_dir) / p
        paths.append(p)
    return paths


class UqffReader:
    """Validated, memory-mapped UQFF shard sets, read as one namespace of layers."""

    def __init__(self, sets: Sequence[Sequence[Path]]):
        self.sets = [list(s) for s in sets]
        files: list[Path] = []
        for s in self.sets:
            for p in s:
                if p.resolve() not in {f.resolve() for f in files}:
                    files.append(p)
        self.files = files
        self._st = [SafetensorsFile(p, "UQFF file") for p in files]
        by_path = {p.resolve(): i for i, p in enumerate(files)}
        for st in self._st:
            self._check_kind(st)
        self.versions: list[tuple[int, int, int]] = [self._check_version([by_path[p.resolve()] for p in s])
                                                     for s in self.sets]
        self.version = max(self.versions)
        self.metadata = self._st[0].metadata
        where: dict[str, int] = {}
        for i, st in enumerate(self._st):
            for name in st.keys():
                if name in VERSION_KEYS:
                    continue  # each set's version was checked above
                if name in where:
                    key = (_split_name(name) or (name, ""))[0]
                    raise UserError(f"Layer {key} is in both {files[where[name]]} and {files[i]} ({name}). "
                                    f"Each layer must come from one file: don't combine two UQFF sets that "
                                    f"quantize the same layers.")
                where[name] = i
        groups: dict[str, dict[str, int]] = {}
        for name, i in where.items():
            if name in VERSION_KEYS:
                continue
            split = _split_name(name)
            if split is None:
                raise UserError(f"{files[i]} is not a UQFF 1.x file as we know it: tensor {name!r} is neither a "
                                f"layer entry (<key>.weight...) nor a version tensor. Re-create the file.")
            key, suffix = split
            groups.setdefault(key, {})[suffix] = i
        self._layers: dict[str, _LayerInfo] = {}
        unsupported: dict[str, list[str]] = {}
        holders: set[Path] = set()
        for key in sorted(groups, key=_natural):
            names = groups[key]
            info = self._check_layer(key, names)
            if isinstance(info, str):
                unsupported.setdefault(info, []).append(key)
                holders.add(files[names["weight.format"]])
            else:
                self._layers[key] = info
        if unsupported:
            parts = "; ".join(f"{len(keys)} {fmt.upper()} layer(s) (e.g. {keys[0]})" for fmt, keys in unsupported.items())
            raise UserError(f"{', '.join(sorted(map(str, holders)))} hold(s) {parts}. mistralrs reads UQFF layers stored as "
                            f"GGML blocks (q4_0 ... q8_0, q2k ... q6k), AFQ or unquantized; re-create the UQFF "
                            f"with one of those types (e.g. --isq q4k or afq4).")

    # -- validation

    def _check_kind(self, st: SafetensorsFile) -> None:
        names = list(st.keys())
        if names and all(n.isdigit() for n in names):
            raise UserError(
                f"{st.path} is a legacy UQFF 0.x file (written by mistral.rs 0.8 or older: layers stored as "
                f"numbered blobs). Neither current mistral.rs nor mistralrs can read it; re-create it from the "
                f"original model with `mistralrs quantize` (or a current mistral.rs)."
            )
        if not any(n.endswith(".weight.format") or n in VERSION_KEYS for n in names):
            what = ("an ordinary safetensors checkpoint" if names else "an empty safetensors file")
            raise UserError(
                f"{st.path} is not a UQFF file: it has no uqff.version tensors and no <layer>.weight.format "
                f"entries; it looks like {what} (such as model.safetensors or {RESIDUAL_NAME}). Pass the "
                f"quantized shards instead, e.g. q4k-0.uqff."
            )

    def _check_version(self, indices: list[int]) -> tuple[int, int, int]:
        first = self._st[indices[0]]
        holders = [i for i in indices if all(k in self._st[i] for k in VERSION_KEYS)]
        if not holders:
            partial = [k for i in indices for k in VERSION_KEYS if k in self._st[i]]
            m = re.fullmatch(r"(.+)-(\d+)\.uqff", first.path.name)
            if partial:
                raise UserError(f"{first.path} is a damaged UQFF file: it has {', '.join(sorted(set(partial)))} but "
                                f"not all three uqff.version tensors. Re-create it.")
            if m and int(m.group(2)) > 0:
                raise UserError(f"{first.path} is shard {m.group(2)} of a UQFF set and has no version tensors; "
                                f"those live in the first shard. Pass {m.group(1)}-0.uqff (the other shards "
                                f"are found from it).")
            raise UserError(
                f"{first.path} has no uqff.version tensors: it was written before UQFF 1.0 (mistral.rs 0.8 or "
                f"older) or is damaged. mistralrs reads UQFF 1.0 to 1.2; re-create the file with "
                f"`mistralrs quantize` or a current mistral.rs."
            )
        st = self._st[holders[0]]
        major, minor, patch = (_scalar(st, k, "U32", "the UQFF version") for k in VERSION_KEYS)
        supported = f"{VERSION[0]}.0 to {VERSION[0]}.{VERSION[1]}"
        if major != VERSION[0]:
            raise UserError(f"{st.path} is UQFF {major}.{minor}.{patch}; mistralrs reads UQFF {supported}. "
                            f"Re-create the file with `mistralrs quantize`, or use a mistral.rs that reads it.")
        if minor > VERSION[1]:
            raise UserError(f"{st.path} is UQFF {major}.{minor}.{patch}, newer than this mistralrs reads "
                            f"(UQFF {supported}). Upgrade mistralrs, or re-create the file with "
                            f"`mistralrs quantize`.")
        return major, minor, patch

    def _check_layer(self, key: str, names: dict[str, int]) -> _LayerInfo | str:
        def st(suffix):
            return self._st[names[suffix]]

        def entry(suffix):
            return st(suffix).entries[f"{key}.{suffix}"]

        def damaged(problem: str, suffix: str = "weight.format"):
            return UserError(f"{st(suffix).path} is a damaged UQFF file: layer {key} {problem}. Re-create the file.")

        if "weight.format" not in names:
            some = next(iter(names))
            raise damaged(f"has {key}.{some} but no {key}.weight.format", some)
        code = _scalar(st("weight.format"), f"{key}.weight.format", "U8", "the layer format")
        fmt = FORMAT_NAMES.get(code)
        if fmt is None:
            raise damaged(f"has format code {code}, which no UQFF 1.x writer uses (0 to 6)")
        if fmt not in _READABLE:
            return fmt
        present = set(names) - {"bias"}
        if present != _SUFFIXES[fmt]:
            missing = sorted(_SUFFIXES[fmt] - present)
            extra = sorted(present - _SUFFIXES[fmt])
            detail = "; ".join(x for x in (missing and f"missing {', '.join(missing)}",
                                           extra and f"unexpected {', '.join(extra)}") if x)
            raise damaged(f"is a {fmt} entry with the wrong set of tensors ({detail})")
        w = entry("weight")
        if fmt == "gguf":
            type_id = _scalar(st("weight.dtype"), f"{key}.weight.dtype", "U32", "the ggml type id")
            kind = _GGML_BY_ID.get(type_id)
            if kind is None:
                try:
                    name = GGMLQuantizationType(type_id).name
                except ValueError:
                    name = "unknown"
                raise UserError(f"{st('weight.dtype').path}: layer {key} is stored as ggml type {type_id} ({name}), "
                                f"which mistralrs cannot read; it reads {', '.join(GGML_TYPE_IDS)}.")
            se = entry("weight.shape")
            if se.dtype != "U32" or len(se.shape) != 1 or se.shape[0] not in (2, 3):
                raise damaged(f"has weight.shape {se.dtype} {list(se.shape)}; expected U32 with 2 or 3 dims",
                              "weight.shape")
            shape = tuple(int(d) for d in st("weight.shape").raw(f"{key}.weight.shape"))
            if w.dtype != "U8" or len(w.shape) != 1:
                raise damaged(f"has weight {w.dtype} {list(w.shape)}; a ggml entry is 1-D U8", "weight")
            rows = int(np.prod(shape[:-1]))
            if kind in _DENSE_GGML:
                expected = rows * shape[-1] * (4 if kind == "F32" else 2)
            else:
                try:
                    expected = rows * ggml_blocks.row_bytes(kind, shape[-1])
                except UserError as e:
                    raise damaged(f"({kind} {list(shape)}) is impossible: {e.message}", "weight") from None
            if w.shape[0] != expected:
                raise damaged(f"({kind} {list(shape)}) should hold {expected} bytes but has {w.shape[0]}", "weight")
            info = _LayerInfo(fmt, kind, shape, names)
        elif fmt == "afq":
            bits = _scalar(st("weight.bits"), f"{key}.weight.bits", "U8", "the AFQ bits")
            group = _scalar(st("weight.group_size"), f"{key}.weight.group_size", "U8", "the AFQ group size")
            if bits not in afq_mod.BITS or group not in afq_mod.GROUP_SIZES:
                raise damaged(f"has AFQ bits {bits} / group size {group}; supported: bits "
                              f"{afq_mod.BITS}, group sizes {afq_mod.GROUP_SIZES}", "weight.bits")
            if w.dtype != "U32" or len(w.shape) not in (2, 3) or (w.shape[-1] * 32) % bits:
                raise damaged(f"has AFQ weight {w.dtype} {list(w.shape)}; expected U32 [out, in*{bits}/32]", "weight")
            cols = w.shape[-1] * 32 // bits
            if cols % group:
                raise damaged(f"has {cols} columns, not a multiple of its group size {group}", "weight")
            groups = (*w.shape[:-1], cols // group)
            for part in ("weight.scales", "weight.biases"):
                e = entry(part)
                if e.dtype not in FLOAT_DTYPES or e.shape != groups:
                    raise damaged(f"has {part} {e.dtype} {list(e.shape)}; expected a float tensor {list(groups)}",
                                  part)
            shape = (*w.shape[:-1], cols)
            info = _LayerInfo(fmt, f"AFQ{bits}", shape, names)
        else:
            if w.dtype not in FLOAT_DTYPES or not w.shape:
                raise damaged(f"has an unquantized weight {w.dtype} {list(w.shape)}; expected a float tensor", "weight")
            info = _LayerInfo(fmt, w.dtype, w.shape, names)
        if "bias" in names:
            b = entry("bias")
            out = info.shape[:-1] if len(info.shape) >= 2 else info.shape
            if b.dtype not in FLOAT_DTYPES or (b.shape != out and b.shape != out[-1:]):
                raise damaged(f"has bias {b.dtype} {list(b.shape)}; expected a float tensor {list(out)}", "bias")
        return info

    # -- access

    def __contains__(self, key: str) -> bool:
        return key in self._layers

    def __len__(self) -> int:
        return len(self._layers)

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def keys(self) -> list[str]:
        return list(self._layers)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._layers[key].shape

    def label(self, key: str) -> str:
        return self._layers[key].label

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self._layers.items()}

    def counts(self) -> dict[str, int]:
        """How many layers are stored each way, e.g. {"Q4_K": 180, "Q6_K": 1}."""
        return dict(Counter(v.label for v in self._layers.values()))

    def get(self, key: str) -> UqffLayer | None:
        return self.layer(key) if key in self._layers else None

    def layer(self, key: str) -> UqffLayer:
        info = self._layers.get(key)
        if info is None:
            raise KeyError(key)

        def arr(suffix):
            return self._st[info.names[suffix]].array(f"{key}.{suffix}")

        def raw(suffix):
            return self._st[info.names[suffix]].raw(f"{key}.{suffix}")

        shape = info.shape
        rows = int(np.prod(shape[:-1])) if len(shape) >= 2 else 1
        if info.format == "gguf":
            data = raw("weight")
            if info.label == "BF16":
                weight = bf16_bits_to_float32(data.view("<u2")).reshape(shape)
            elif info.label in _DENSE_GGML:
                weight = data.view("<f4" if info.label == "F32" else "<f2").reshape(shape)
            else:
                weight = GgmlTensor(info.label, (rows, shape[-1]), data.reshape(rows, -1))
        elif info.format == "afq":
            bits = int(raw("weight.bits").reshape(-1)[0])
            group = int(raw("weight.group_size").reshape(-1)[0])
            weight = AfqTensor(bits, group, (rows, shape[-1]), raw("weight").reshape(rows, -1),
                               arr("weight.scales").astype(np.float32, copy=False).reshape(rows, -1),
                               arr("weight.biases").astype(np.float32, copy=False).reshape(rows, -1))
        else:
            weight = arr("weight")
        bias = arr("bias") if "bias" in info.names else None
        return UqffLayer(key, info.format, info.label, shape, weight, bias, self.files[info.names["weight"]])

    def close(self) -> None:
        for st in self._st:
            st.close()

    def __enter__(self) -> UqffReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_uqff(spec, base_dir: str | os.PathLike | None = None) -> UqffReader:
    """Open UQFF files as one reader.

    `spec` is a path, several paths separated by ';' (e.g. one set per quantization type),
    or a sequence of paths. Each path names a file; the first shard of a set (`q4k-0.uqff`)
    brings in the rest. Relative paths are taken from `base_dir` when it is given (the model
    folder). Everything is validated up front: any problem is a UserError naming the file."""
    sets = [expand_shards(p) for p in _split_spec(spec, base_dir)]
    resolved = [{p.resolve() for p in s} for s in sets]
    # a file named on its own that another set already brings in (q4k-0.uqff;q4k-1.uqff)
    keep = [s for i, s in enumerate(sets)
            if not any(j != i and resolved[i] <= resolved[j] and (resolved[i] != resolved[j] or j < i)
                       for j in range(len(sets)))]
    return UqffReader(keep)


def check_model_shapes(reader: UqffReader, expected: Mapping[str, Sequence[int]]) -> list[str]:
    """Check a reader's layers against the model's {key: shape} (e.g. (out, in), or (E, out, in)
    for stacked experts). Raises a UserError when the UQFF was made for another model (a layer
    the model lacks, or a different shape); returns the expected keys the UQFF does not hold
    (they come from the residual or the checkpoint)."""
    wrong, unknown = [], []
    for key in reader.keys():
        if key not in expected:
            unknown.append(key)
        elif tuple(reader.shape(key)) != tuple(expected[key]):
            wrong.append(f"layer {key} has shape {tuple(reader.shape(key))} but the model expects "
                         f"{tuple(expected[key])}")
    if wrong or unknown:
        problems = wrong + [f"layer {k} is not in this model" for k in unknown]
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        files = ", ".join(p.name for p in reader.files)
        raise UserError(f"The UQFF file(s) {files} were made for a different model: {'; '.join(problems[:3])}{more}. "
                        f"Use a UQFF made from this model, or re-create it with `mistralrs quantize`.")
    return [k for k in expected if k not in reader]
