"""The MLX backend against mlx-lm on the same model, prompt and machine.

    pip install mlx-lm
    python benchmarks/mlx_vs_mlx_lm.py [--dtype bf16|f32] [--prompt-len 512] [--gen-len 128]

Both run greedy decoding of the benchmark model (bench-models/, built by
text_generation.py's helper when missing) with the same token ids; both report
prefill tok/s (prompt / time to first token) and decode tok/s (tokens after the
first / their time). Goal (text-generation issue): at least mlx-lm's speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from text_generation import FOLDERS, ROOT, ensure_models


def ours(folder, dtype, prompt, gen_len, iterations):
    from mistralrs import load
    from mistralrs.engine.params import SamplingParams

    llm = load(folder, backend="mlx", dtype=dtype)
    params = SamplingParams(temperature=0, max_tokens=gen_len, ignore_eos=True)
    llm.generate(prompt, params)
    results = []
    for _ in range(iterations):
        done = llm.generate(prompt, params)
        results.append((done.timing.prefill_tok_s(len(prompt)), done.timing.decode_tok_s(gen_len)))
    return results


def mlx_lm(folder, dtype, prompt, gen_len, iterations):
    import mlx.core as mx
    from mlx_lm import load as lm_load
    from mlx_lm.generate import generate_step

    model, _ = lm_load(folder)
    if dtype == "f32":
        model.set_dtype(mx.float32)

    def once():
        start = time.perf_counter()
        first = None
        steps = generate_step(mx.array(prompt), model, max_tokens=gen_len)
        for n, _ in enumerate(steps, start=1):
            if n == 1:
                first = time.perf_counter()
        end = time.perf_counter()
        return len(prompt) / (first - start), (gen_len - 1) / (end - first)

    once()
    return [once() for _ in range(iterations)]


def show(name, results):
    prefill = [r[0] for r in results]
    decode = [r[1] for r in results]
    sd = statistics.stdev if len(results) > 1 else (lambda _: 0.0)
    print(f"{name:12} prefill {statistics.mean(prefill):8.1f} ± {sd(prefill):5.1f}   "
          f"decode {statistics.mean(decode):6.1f} ± {sd(decode):4.1f} tok/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bf16", choices=list(FOLDERS))
    parser.add_argument("--models", default=os.path.join(ROOT, "bench-models"))
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args()
    ensure_models(args.models)
    folder = os.path.join(args.models, FOLDERS[args.dtype])
    prompt = np.random.default_rng(0).integers(5, 49000, args.prompt_len).tolist()
    print(f"MLX ({args.dtype}), prompt {args.prompt_len}, generated {args.gen_len}, {args.iterations} iterations")
    show("mistralrs", ours(folder, args.dtype, prompt, args.gen_len, args.iterations))
    show("mlx-lm", mlx_lm(folder, args.dtype, prompt, args.gen_len, args.iterations))


if __name__ == "__main__":
    main()
