"""Decode and prefill speed of the text-generation core against the issue's goals.

    python benchmarks/text_generation.py [--backend torch|mlx] [--dtype f32 bf16] [--threads N]

Uses the 134.5 M-parameter Qwen3-shaped benchmark model (hidden 576, 30 layers),
built with ../shared/bench/make_models.py into bench-models/ when it is missing.
Runs a 512-token prompt and 128 generated tokens (greedy, EOS ignored), reports
mean ± std over the iterations after one warm-up, and the goal it is measured
against. Benchmark on a quiet machine: a second busy process halves the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAKE_MODELS = os.path.join(ROOT, "..", "shared", "bench", "make_models.py")
FOLDERS = {"f32": "bench-qwen3-f32", "bf16": "bench-qwen3"}
# Goals from the text-generation issue (torch, this 2-core CPU).
GOALS = {("torch", "f32"): (35.0, None), ("torch", "bf16"): (45.0, 2000.0)}


def ensure_models(models_dir: str) -> None:
    missing = [name for name in FOLDERS.values() if not os.path.exists(os.path.join(models_dir, name, "config.json"))]
    if missing:
        print(f"building {', '.join(missing)} with make_models.py ...", file=sys.stderr)
        subprocess.run([sys.executable, MAKE_MODELS, "--out", models_dir, "--only", *missing], check=True)


def run(backend: str, dtype: str, models_dir: str, prompt_len: int, gen_len: int, iterations: int, threads):
    from mistralrs import load
    from mistralrs.engine.params import SamplingParams

    llm = load(os.path.join(models_dir, FOLDERS[dtype]), backend=backend, dtype=dtype, threads=threads, cpu=True)
    prompt = np.random.default_rng(0).integers(5, llm.vocab_size - 5, prompt_len).tolist()
    params = SamplingParams(temperature=0, max_tokens=gen_len, ignore_eos=True)
    llm.generate(prompt, params)  # warm-up: allocator, kernels, caches
    prefill, decode = [], []
    for _ in range(iterations):
        done = llm.generate(prompt, params)
        prefill.append(done.timing.prefill_tok_s(prompt_len))
        decode.append(done.timing.decode_tok_s(gen_len))
    return prefill, decode


def fmt(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):8.1f} ± {spread:5.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    parser.add_argument("--dtype", nargs="+", default=["f32", "bf16"], choices=list(FOLDERS))
    parser.add_argument("--models", default=os.path.join(ROOT, "bench-models"))
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    ensure_models(args.models)
    print(f"backend {args.backend}, prompt {args.prompt_len}, generated {args.gen_len}, "
          f"{args.iterations} iterations after 1 warm-up")
    print(f"{'dtype':6} {'prefill tok/s':>18} {'decode tok/s':>18}   goal (decode / prefill)")
    for dtype in args.dtype:
        prefill, decode = run(args.backend, dtype, args.models, args.prompt_len, args.gen_len,
                              args.iterations, args.threads)
        goal = GOALS.get((args.backend, dtype))
        goal_text = "-" if goal is None else f">= {goal[0]:.0f}" + (f" / >= {goal[1]:.0f}" if goal[1] else "")
        print(f"{dtype:6} {fmt(prefill):>18} {fmt(decode):>18}   {goal_text}")


if __name__ == "__main__":
    main()
