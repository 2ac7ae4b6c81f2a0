"""Building a model from its files: safetensors folders (plain, in-situ quantized, or with
UQFF layers) and llama.cpp files (GGUF, and GGML read into the same view).
`engine.api.load` validates the request and calls these.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from mistralrs.backends.ops import FLOAT_DTYPES, Ops
from mistralrs.engine import heap
from mistralrs.engine.source import ModelSource
from mistralrs.engine.weights import load_into, read_safetensors, safetensors_files
from mistralrs.errors import ModelLoadError, UserError
from mistralrs.models.base import QUANTIZED, Embedding, Linear
from mistralrs.models.registry import build_model, resolve_architecture
from mistralrs.quant import ggml_blocks
from mistralrs.quant.qtensor import GgmlTensor


@dataclass
class LoadedModel:
    """What load() assembled, before it is wrapped in an LLM."""

    model: object
    config: dict
    arch: str
    dtype: str


def resolve_isq(isq, organization: str, ops: Ops):
    from mistralrs.quant.isq import parse_isq

    if organization not in ("default", "moqe"):
        raise UserError(f"Unknown --isq-organization `{organization}`: use default or moqe.",
                        param="isq_organization")
    if isq is None:
        return None
    isq_type = parse_isq(isq, ops.name)
    if organization == "moqe":
        # None of the architectures here has MoE experts, so "only the experts" is nothing.
        raise UserError("--isq-organization moqe quantizes only the MoE expert layers, and this model "
                        "has none (it is a dense model). Use --isq-organization default.",
                        param="isq_organization")
    return isq_type


class LoadStatus:
    """A one-line status on stderr while weights load (only when asked and stderr is a terminal)."""

    def __init__(self, enabled: bool):
        import sys

        self.progress = enabled
        self.enabled = enabled and sys.stderr.isatty()
        self.stream = sys.stderr

    def note(self, message: str) -> None:
        """A line of the load log that stays (e.g. a quantization fallback)."""
        if self.progress:
            self.update("")
            self.stream.write(message + "\n")
            self.stream.flush()

    def update(self, message: str) -> None:
        if self.enabled:
            self.stream.write("\r\033[2K" + message)
            self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[2K")
            self.stream.flush()


def read_json(path: str, required: bool) -> dict:
    if not os.path.exists(path):
        if required:
            raise ModelLoadError(
                f"{path} does not exist: the folder is not a Hugging Face model folder "
                "(it needs config.json next to the weights)."
            )
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); fix or re-download the file.") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} should hold a JSON object, not {type(data).__name__}.")
    return data


def resolve_dtype(requested: str, config: dict, ops: Ops) -> str:
    if requested != "auto":
        return requested
    stored = config.get("torch_dtype") or config.get("dtype") or "float32"
    stored = stored if stored in FLOAT_DTYPES else "float32"
    if stored == "float16" and ops.name == "torch" and ops.device == "cpu":
        return "float32"  # fp16 kernels on CPU are slow and fp16 range problems are not worth it
    return stored


def calibrate(ops: Ops, source: ModelSource, config: dict, key: str, dtype: str, status: LoadStatus, tok,
               calibration_file: str) -> dict:
    """The importance matrix of `calibration_file`'s text under the full-precision model."""
    from mistralrs.engine.calibration import collect_imatrix

    try:
        with open(calibration_file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read the calibration file {calibration_file}: {exc}. Give a UTF-8 text file.",
                        param="calibration_file") from None
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) < 16:
        raise UserError(f"The calibration file {calibration_file} has {len(ids)} tokens; give at least a few "
                        "paragraphs of text like the model's real input.", param="calibration_file")
    full = load_folder(ops, source, config, key, dtype, status)
    status.update(f"Calibrating on {len(ids)} tokens of {os.path.basename(calibration_file)}")
    importance = collect_imatrix(full.model, ops, ids)
    del full
    return importance


def load_folder(ops: Ops, source: ModelSource, config: dict, key: str, dtype: str, status: LoadStatus,
                 isq=None, from_uqff: str | None = None, importance: dict | None = None) -> LoadedModel:
    folder = source.folder
    quantized = isq is not None or from_uqff
    if quantized and dtype == "auto" and ops.name == "torch" and ops.device == "cpu":
        # The integer kernels take bfloat16 rows (converted inside each quantized linear); around
        # them, float32 activations skip a dtype conversion per op and decode ~20 % faster.
        dtype = "float32"
    dtype = resolve_dtype(dtype, config, ops)
    ops.compute_dtype = dtype
    model = build_model(config, ops, key)
    if from_uqff:
        from mistralrs.engine.uqff_loading import open_for_model, uqff_batches

        reader = open_for_model(from_uqff, folder, model)
        status.update(f"Loading {reader.files[0].name}")
        load_into(model, uqff_batches(ops, reader, folder, dtype), model.sanitize)
        for note in kernel_notes(ops, model):
            status.note(f"UQFF {note}")
        finalize(ops, model)
        return LoadedModel(model, config, key, dtype)
    files = safetensors_files(folder)
    if isq is None:
        def report(done, total):
            status.update(f"Loading weights: {done}/{total} file(s)")

        load_into(model, read_safetensors(ops, files, dtype), model.sanitize, report, len(files))
    else:
        from mistralrs.engine.isq_loading import IsqPlan, quantized_batches

        plan = IsqPlan(model, isq, ops, importance)
        load_into(model, quantized_batches(ops, files, plan, dtype, model.sanitize, status.update),
                  lambda weights: weights)
        for note in plan.notes:
            status.note(f"ISQ {isq.name}: {note}")
    finalize(ops, model)
    return LoadedModel(model, config, key, dtype)


def kernel_notes(ops: Ops, model) -> list[str]:
    """One line per stored format that the backend converts rather than runs as it is."""
    layouts = {}
    for _, owner, attr in model.weight_slots():
        weight = getattr(owner, attr)
        if isinstance(weight, QUANTIZED) and weight.label not in layouts:
            layouts[weight.label] = ops.quantized_layout(weight)
    return [f"{label}: {layout}" for label, layout in sorted(layouts.items()) if layout]


def load_gguf(ops: Ops, source: ModelSource, dtype: str, arch: str | None, status: LoadStatus,
              gguf=None):
    """A GGUF model, or any file already read into `gguf_file.GGUFModel`'s view (`gguf`)."""
    from mistralrs.engine.gguf_file import read_gguf
    from mistralrs.engine.tokenizer import Tokenizer

    if gguf is None:
        gguf = read_gguf(source.gguf_files)
    config = gguf.config
    key = resolve_architecture(config, arch)
    dtype = "float32" if dtype == "auto" else dtype
    ops.compute_dtype = dtype
    model = build_model(config, ops, key)
    names = list(gguf.tensor_names())
    origin = os.path.basename(source.gguf_files[0])
    # Projections and the embedding table stay in their GGML blocks and run through the
    # quantized kernels (a tied head shares the table); norms are dequantized.
    quantizable = {name for name, owner, attr in model.weight_slots()
                   if isinstance(owner, (Linear, Embedding)) and attr == "weight"}

    def tensor(name):
        if name in quantizable and gguf.ggml_type(name) in ggml_blocks.KINDS:
            raw = gguf.load_raw(name)
            if raw.ggml_type in ggml_blocks.KINDS:
                return GgmlTensor(raw.ggml_type, tuple(raw.shape), raw.data)
        return ops.asarray(gguf.load_tensor(name), dtype)

    def batches():
        for name in names:
            yield origin, {name: tensor(name)}

    def report(done, total):
        status.update(f"Loading {origin}: {done}/{total} tensors")

    load_into(model, batches(), model.sanitize, report, len(names))
    for note in kernel_notes(ops, model):
        status.note(f"{origin}: {note}")
    finalize(ops, model)
    tok = None  # without one in the file, load() asks for -t / --tok-model-id
    if gguf.has_tokenizer:
        tok = Tokenizer(gguf.tokenizer, gguf.tokenizer_config, gguf.generation_config, origin=source.gguf_files[0])
    return LoadedModel(model, config, key, dtype), tok


def load_ggml(ops: Ops, source: ModelSource, dtype: str, arch: str | None, status: LoadStatus, gqa: int = 1):
    """A GGML (pre-GGUF llama.cpp) Llama file; `gqa` attention heads share each key/value head."""
    from mistralrs.engine.ggml_file import read_ggml

    return load_gguf(ops, source, dtype, arch, status, read_ggml(source.gguf_files[0], gqa))


def finalize(ops: Ops, model) -> None:
    """Fuse and re-lay weights, then compute them now rather than at the first token.

    MLX loads lazily, and a lazy array belongs to the thread that made it: evaluating
    here lets server threads use the model, and puts load time where users expect it.
    """
    model.finalize()
    ops.eval(*(getattr(owner, attr) for _, owner, attr in model.weight_slots()))
    heap.return_freed_memory()


def generation_defaults(folder: str | None) -> dict:
    if folder is None:
        return {}
    return read_json(os.path.join(folder, "generation_config.json"), required=False)
