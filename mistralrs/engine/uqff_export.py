"""`mistralrs quantize`: quantize a checkpoint once and write UQFF shard sets.

The checkpoint is streamed tensor by tensor through the same per-tensor plan as
`--isq` (`engine.isq_loading.IsqPlan`), so a layer read back with `--from-uqff`
is bit-identical to the one `--isq` makes. Nothing is loaded onto a backend; the
model is only built as a skeleton, for its weight names and shapes.

Directory output holds one `<type>-N.uqff` set per type, `residual.safetensors`
(norms and whatever stays unquantized), the config and tokenizer files, a
`uqff_report.json`, and a README.md model card.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mistralrs.backends import get_ops
from mistralrs.engine.isq_loading import IsqPlan, checkpoint_tensors
from mistralrs.engine.source import resolve_source
from mistralrs.engine.weights import safetensors_files
from mistralrs.errors import UserError
from mistralrs.models.registry import build_model, resolve_architecture
from mistralrs.quant import uqff
from mistralrs.quant.isq import LEVELS, IsqType, parse_isq
from mistralrs.quant.safetensors_io import SafetensorsFile

ASSETS = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "chat_template.jinja", "chat_template.json")


@dataclass
class ExportResult:
    folder: Path
    sets: dict[str, list[Path]] = field(default_factory=dict)  # type name -> shard files
    notes: list[str] = field(default_factory=list)
    readme: Path | None = None


def resolve_types(levels: list[str], backend: str) -> list[IsqType]:
    """The types to write; a numeric level writes every backend's type for it, as mistral.rs does."""
    types: dict[str, IsqType] = {}
    for level in levels:
        text = str(level).strip().lower()
        if text.isdigit() and int(text) in LEVELS["torch"]:
            for name in (LEVELS["torch"][int(text)], LEVELS["mlx"][int(text)]):
                types.setdefault(name, IsqType(name))
        else:
            t = parse_isq(text, backend)
            types.setdefault(t.name, t)
    if not types:
        raise UserError("--isq needs at least one type, e.g. --isq q4k or --isq q4k,q8_0.", param="isq")
    return list(types.values())


def export_uqff(model_id: str, levels: list[str], output: str | os.PathLike, *, backend: str = "auto",
                arch: str | None = None, hf_cache: str | None = None, token=None, revision: str | None = None,
                isq_organization: str = "default", readme: bool = True, shard_limit: int = uqff.MAX_SHARD_BYTES,
                imatrix: str | None = None, calibration_file: str | None = None,
                report: Callable[[str], None] = lambda message: None) -> ExportResult:
    ops = get_ops(backend, cpu=True)
    types = resolve_types(levels, ops.name)
    if isq_organization == "moqe":
        raise UserError("--isq-organization moqe quantizes only MoE expert layers, and none of the supported "
                        "architectures has them. Use --isq-organization default.", param="isq_organization")
    out = Path(output)
    single_file = out.suffix == ".uqff"
    if single_file and len(types) > 1:
        raise UserError(f"-o {out} names one .uqff file, but {len(types)} types were asked for "
                        f"({', '.join(t.name for t in types)}). Give a directory to write one set per type.",
                        param="output")
    source = resolve_source(model_id, hf_cache=hf_cache, token=token, revision=revision)
    if source.is_gguf:
        raise UserError("quantize reads a Hugging Face checkpoint (safetensors); this is a GGUF file, "
                        "which is quantized already and loads as it is with -f.", param="model_id")
    folder = source.folder
    config = json.loads(Path(folder, "config.json").read_text(encoding="utf-8"))
    key = resolve_architecture(config, arch)
    model = build_model(config, ops, key)
    importance = _importance(folder, key, ops.name, imatrix, calibration_file)
    files = safetensors_files(folder)
    target_dir = out.parent if single_file else out
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the output folder {target_dir}: {exc.strerror or exc}.",
                        param="output") from None

    result = ExportResult(target_dir)
    outputs = []
    residual: dict[str, np.ndarray] = {}
    for isq in types:
        plan = IsqPlan(model, isq, None, importance)
        biases = _target_biases(files, plan)
        written: dict[str, tuple[str, tuple[int, ...]]] = {}
        layers = _quantized_layers(files, plan, model.sanitize, residual, written, report)
        stem = out if single_file else target_dir / isq.name
        shards = uqff.write_uqff(stem, layers, biases, shard_limit=shard_limit)
        result.sets[isq.name] = shards
        result.notes += [f"{isq.name}: {note}" for note in plan.notes]
        outputs.append(uqff.report_output(isq.name, shards, written))
    for name in [n for n in residual if n.endswith(".bias") and n[: -len(".bias")] in _layer_keys(outputs)]:
        del residual[name]  # stored with their layers
    uqff.write_residual(target_dir, residual)
    uqff.write_report(target_dir, outputs, base_model=model_id)
    if not single_file:
        _copy_assets(folder, target_dir)
        if readme:
            result.readme = _write_model_card(target_dir, model_id, result.sets)
    return result


def _importance(folder: str, key: str, backend: str, imatrix: str | None, calibration_file: str | None):
    if imatrix and calibration_file:
        raise UserError("--imatrix and --calibration-file both give the importance matrix; use one.",
                        param="imatrix")
    if imatrix:
        from mistralrs.models.registry import ARCHITECTURES
        from mistralrs.quant.imatrix import read_imatrix

        return read_imatrix(imatrix, ARCHITECTURES[key])
    if not calibration_file:
        return None
    from mistralrs.engine.api import load
    from mistralrs.engine.calibration import collect_imatrix

    try:
        text = Path(calibration_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read the calibration file {calibration_file}: {exc}. Give a UTF-8 text file.",
                        param="calibration_file") from None
    full = load(folder, backend=backend, cpu=True)
    return collect_imatrix(full.model, full.ops, full.encode(text, add_special_tokens=False))


def _layer_keys(outputs: list[dict]) -> set[str]:
    return {d["module"] for o in outputs for d in o["layer_details"]}


def _target_biases(files: list[str], plan: IsqPlan) -> dict[str, np.ndarray]:
    """Biases of the quantized layers, read first: a shard stores a layer's bias with its weight."""
    wanted = {name[: -len(".weight")] for name in plan.targets}
    biases = {}
    for path in files:
        checkpoint = SafetensorsFile(path, "checkpoint file")
        for name in checkpoint.keys():
            if name.endswith(".bias") and name[: -len(".bias")] in wanted:
                biases[name[: -len(".bias")]] = np.array(checkpoint.array(name), dtype=np.float32)
    return biases


def _quantized_layers(files, plan: IsqPlan, sanitize, residual: dict, written: dict, report):
    """(key, quantized tensor) pairs for write_uqff, streamed; the rest lands in `residual`."""
    total = len(plan.targets)
    done = 0
    for _, name, values in checkpoint_tensors(files, sanitize):
        q = plan.quantize(name, values) if name in plan.targets else None
        if q is None:
            residual.setdefault(name, np.array(values))
            continue
        done += 1
        report(f"Quantizing to {plan.isq.name}: {done}/{total} tensors")
        key = name[: -len(".weight")]
        written[key] = (uqff.stored_label(q), q.shape)
        yield key, q


def _copy_assets(folder: str, target: Path) -> None:
    for name in ASSETS:
        src = Path(folder, name)
        if not src.is_file():
            continue
        if name == "config.json":
            config = json.loads(src.read_text(encoding="utf-8"))
            config.pop("quantization_config", None)  # the UQFF describes the quantization now
            (target / name).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        else:
            shutil.copyfile(src, target / name)


def _write_model_card(target: Path, model_id: str, sets: dict[str, list[Path]]) -> Path:
    name = Path(model_id.rstrip("/")).name
    rows = "\n".join(f"| {quant} | {', '.join(p.name for p in shards)} | "
                     f"`mistralrs run -m <this repo> --from-uqff {shards[0].name}` |"
                     for quant, shards in sets.items())
    card = f"""---
tags:
  - uqff
  - mistral.rs
base_model: {model_id}
base_model_relation: quantized
---

# {name} (UQFF)

Pre-quantized [UQFF](https://github.com/EricLBuehler/mistral.rs) files of `{model_id}`, made with
`mistralrs quantize`. Load one with `--from-uqff`; the other shards of a set are found automatically.

| Quantization | Files | Run |
|---|---|---|
{rows}

Serve it with an OpenAI-compatible API:

```bash
mistralrs serve -m <this repo> --from-uqff {next(iter(sets.values()))[0].name}
```
"""
    path = target / "README.md"
    path.write_text(card, encoding="utf-8")
    return path
