"""Dev-only: UQFF interchange with the original mistral.rs (its PyPI package `mistralrs`).

Not part of the test suite (it needs a second virtualenv with mistralrs==0.9.5, a real HF
model folder and minutes of CPU). Steps, each in the venv named:

  python3 -m venv /work/venv-mistralrs-orig && /work/venv-mistralrs-orig/bin/pip install mistralrs==0.9.5
  ORIG=/work/venv-mistralrs-orig/bin/python; OURS=/work/venv/bin/python; M=bench-models/bench-qwen3

  $ORIG scripts/uqff_interop.py write-orig $M q4k OUT/theirs-q4k     # mistral.rs writes a UQFF
  $OURS scripts/uqff_interop.py check-orig $M q4k OUT/theirs-q4k     # we read it, compare bytes
  $OURS scripts/uqff_interop.py write-ours $M q4k OUT/theirs-q4k OUT/ours-q4k
                                                                     # same layers, our quantizers
  $OURS scripts/uqff_interop.py rewrite q4k OUT/theirs-q4k OUT/rewritten-q4k
                                                                     # their layers, our writer
  $ORIG scripts/uqff_interop.py generate OUT/theirs-q4k q4k-0.uqff   # mistral.rs loads each and
  $ORIG scripts/uqff_interop.py generate OUT/ours-q4k q4k-0.uqff     # generates greedily
  $ORIG scripts/uqff_interop.py generate OUT/rewritten-q4k q4k-0.uqff

The results are recorded in docs/uqff.md ("Interchange with mistral.rs 0.9.5").
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

PROMPT = "The capital of France is"


def write_orig(model: str, quant: str, out: str) -> None:
    from mistralrs import Runner, Which

    Path(out).mkdir(parents=True, exist_ok=True)
    t = time.time()
    # write_uqff must end in .uqff; mistral.rs writes <stem>-0.uqff, residual, report and assets beside it
    Runner(which=Which.Plain(model_id=model, write_uqff=f"{out}/{quant}.uqff"), in_situ_quant=quant,
           max_seqs=1, no_paged_attn=True)
    print(f"mistral.rs wrote {sorted(p.name for p in Path(out).iterdir())} in {time.time() - t:.1f}s")


def _original_weights(model: str) -> dict:
    import torch
    from safetensors.torch import load_file

    return {k: v.to(torch.float32).numpy() for k, v in load_file(f"{model}/model.safetensors").items()}


def check_orig(model: str, quant: str, out: str) -> None:
    import numpy as np

    from mistralrs.quant import afq, ggml_blocks, uqff

    orig = _original_weights(model)
    reader = uqff.open_uqff(f"{out}/{quant}-0.uqff")
    residual = uqff.read_residual(out)
    same = total = 0
    errors = []
    for key in reader.keys():
        layer = reader.layer(key)
        w = orig[key + ".weight"]
        deq = layer.weight.dequantize() if not isinstance(layer.weight, np.ndarray) else layer.weight
        errors.append(float(np.sqrt(np.mean((deq - w) ** 2) / np.mean(w**2))))
        if layer.format == "gguf":
            mine = ggml_blocks.quantize(w, layer.label)
            same += bool(np.array_equal(mine, layer.weight.data))
        elif layer.format == "afq":
            t = afq.quantize(w, layer.weight.bits, layer.weight.group_size)
            same += bool(np.array_equal(t.weight, layer.weight.weight) and np.array_equal(t.scales, layer.weight.scales))
        total += 1
    print(f"{quant}: UQFF {reader.version}, {len(reader)} layers {reader.counts()}, residual {len(residual)} "
          f"tensors; relative RMSE vs the checkpoint median {np.median(errors):.4f} max {max(errors):.4f}; "
          f"byte-identical with our quantizer: {same}/{total}")


def write_ours(model: str, quant: str, theirs: str, out: str) -> None:
    """The same layer set and per-layer types mistral.rs chose, quantized by us."""
    from mistralrs.quant import afq, ggml_blocks, uqff
    from mistralrs.quant.qtensor import GgmlTensor

    orig = _original_weights(model)
    reader = uqff.open_uqff(f"{theirs}/{quant}-0.uqff")
    Path(out).mkdir(parents=True, exist_ok=True)
    layers = {}
    for key in reader.keys():
        w = orig[key + ".weight"]
        label = reader.label(key)
        if label.startswith("AFQ"):
            layers[key] = afq.quantize(w, int(label[3:]), reader.layer(key).weight.group_size)
        else:
            layers[key] = GgmlTensor(label, w.shape, ggml_blocks.quantize(w, label))
    paths = uqff.write_uqff(f"{out}/{quant}", layers)
    residual = uqff.read_residual(theirs)
    uqff.write_residual(out, {k: orig[k] for k in residual})
    uqff.write_report(out, [uqff.report_output(quant, paths, layers)])
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(f"{theirs}/{name}", f"{out}/{name}")
    print(f"wrote {[p.name for p in paths]} + residual ({len(residual)} tensors) to {out}")


def rewrite(quant: str, theirs: str, out: str) -> None:
    """Read mistral.rs's files with our reader and write them again with our writer: the
    layers are then byte-identical, so mistral.rs must generate exactly what it does from its own."""
    from mistralrs.quant import uqff

    reader = uqff.open_uqff(f"{theirs}/{quant}-0.uqff")
    Path(out).mkdir(parents=True, exist_ok=True)
    layers = {key: reader.layer(key).weight for key in reader.keys()}
    paths = uqff.write_uqff(f"{out}/{quant}", layers)
    uqff.write_residual(out, uqff.read_residual(theirs))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(f"{theirs}/{name}", f"{out}/{name}")
    print(f"re-wrote {len(layers)} layers into {[p.name for p in paths]}")


def generate(folder: str, uqff_file: str) -> None:
    from mistralrs import CompletionRequest, Runner, Which

    runner = Runner(which=Which.Plain(model_id=folder, from_uqff=f"{folder}/{uqff_file}"), max_seqs=1,
                    no_paged_attn=True)
    res = runner.send_completion_request(CompletionRequest(model="default", prompt=PROMPT, max_tokens=24,
                                                           temperature=0.0))
    print(f"{folder}: {PROMPT!r} -> {res.choices[0].text!r}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"write-orig": write_orig, "check-orig": check_orig, "write-ours": write_ours, "rewrite": rewrite,
     "generate": generate}[command](*args)
