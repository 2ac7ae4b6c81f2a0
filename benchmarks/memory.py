"""Resident memory of a loaded model against what it holds: ISQ's goal of at most 1.3 x (weights + KV cache).

    python benchmarks/memory.py [--models bench-qwen3 bench-qwen3-h512] [--quant none q8_0 q4k]
                                [--compile 0 1] [--prompt-len 512] [--gen-len 128]

For each model folder (under bench-models/, built with ../shared/bench/make_models.py, or any
path), type and compile setting, a fresh process loads the model on torch's CPU backend and
reports:

- weights: the bytes of every tensor the process holds after loading (unique storages), which
  is the quantized weights plus the few unquantized ones (norms, the embedding table's type);
- load: anonymous resident memory (Linux RssAnon) that `load` added, and its ratio to weights;
- KV: the cache a generation of prompt-len + gen-len tokens allocates (it grows in steps);
- generating: the most RssAnon added while that generation runs (read at every token), and its
  ratio to weights + KV; idle: what stays once it has finished.

Verdict "ok": both ratios within 1.3.

File-backed pages are left out (safetensors are memory-mapped; clean pages are page cache).
`--compile 1` loads as the torch CPU default does, with compiled decoder layers, whose
compiler stays resident: a fixed cost (engine.compiling.COMPILED_LAYERS_BYTES) that is large
beside a 134.5 M model and small beside a real one. Run each setting once before quoting it:
the first compile of a model on a machine leaves ~30 MB more than loads that find inductor's
on-disk cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOUND = 1.3

MEASURE = r"""
import gc, json, sys
import numpy as np
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0
model, quant, compile, prompt_len, gen_len = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
import torch
from mistralrs import load
from mistralrs.backends import get_ops
from mistralrs.engine import chat_template, tokenizer  # imports are not the model's memory
from mistralrs.engine.params import SamplingParams
get_ops("torch", cpu=True)  # nor is the backend library's own start-up
gc.collect()
before = anon()
llm = load(model, backend="torch", cpu=True, compile=compile, **({} if quant == "none" else {"isq": quant}))
gc.collect()
loaded = anon() - before

def held_bytes():
    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and not isinstance(obj, torch._subclasses.FakeTensor):
            storage = obj.untyped_storage()
            if obj.device.type == "cpu" and storage.data_ptr():
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())

weights = held_bytes()
# The KV cache this generation allocates: the prompt's reservation, then one position a step.
caches = llm.model.make_caches()
for cache in caches:
    cache.reserve(prompt_len)
    for _ in range(gen_len):
        cache.offset += 1
        cache.reserve(1)
kv = sum(cache.nbytes for cache in caches)
del caches
gc.collect()
prompt = np.random.default_rng(0).integers(5, llm.vocab_size - 5, prompt_len).tolist()
peak = 0
for _ in llm.stream(prompt, SamplingParams(temperature=0, max_tokens=gen_len, ignore_eos=True)):
    peak = max(peak, anon() - before)  # sampled at every token, while the KV cache is alive
gc.collect()
print(json.dumps({"weights": weights, "load": loaded, "kv": kv, "peak": peak, "idle": anon() - before}))
"""


def measure(model: str, quant: str, compile: bool, prompt_len: int, gen_len: int) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", MEASURE, model, quant, "1" if compile else "0",
                           str(prompt_len), str(gen_len)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(label: str, r: dict) -> str:
    if "error" in r:
        return f"{label:<30} error: {r['error']}"
    mb = 1e6
    load_ratio = r["load"] / r["weights"]
    peak_ratio = r["peak"] / (r["weights"] + r["kv"])
    verdict = "ok" if max(load_ratio, peak_ratio) <= BOUND else f"over {BOUND}x"
    return (f"{label:<30} weights {r['weights'] / mb:6.1f} MB  load +{r['load'] / mb:6.1f} MB ({load_ratio:4.2f}x)  "
            f"KV {r['kv'] / mb:5.1f} MB  generating +{r['peak'] / mb:6.1f} MB ({peak_ratio:4.2f}x)  "
            f"idle +{r['idle'] / mb:6.1f} MB  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["bench-qwen3", "bench-qwen3-h512"])
    parser.add_argument("--quant", nargs="+", default=["none", "q8_0", "q4k"], help="ISQ types; none: unquantized")
    parser.add_argument("--compile", nargs="+", type=int, choices=[0, 1], default=[0, 1])
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--gen-len", type=int, default=128)
    args = parser.parse_args()
    for name in args.models:
        model = name if os.path.isdir(name) else os.path.join(ROOT, "bench-models", name)
        if not os.path.isdir(model):
            sys.exit(f"error: no model folder {name!r} (build it with ../shared/bench/make_models.py --only {name})")
        for quant in args.quant:
            for compile in args.compile:
                label = f"{os.path.basename(model.rstrip('/'))} {quant} {'compiled' if compile else 'eager'}"
                print(row(label, measure(model, quant, bool(compile), args.prompt_len, args.gen_len)), flush=True)


if __name__ == "__main__":
    main()
