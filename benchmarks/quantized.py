"""Speed and memory of quantized models (--isq, --from-uqff, GGUF), optionally against mistral.rs.

    python benchmarks/quantized.py [--models bench-qwen3 bench-qwen3-h512] [--quant q8_0 q4k]
                                   [--backend torch] [--original /path/to/venv/bin/python]

For each model folder under bench-models/ (built with ../shared/bench/make_models.py;
`--only bench-qwen3-h512` for the K-quant-friendly variant) and each type, a fresh
process loads the model with in-situ quantization and reports load time, anonymous
resident memory added by the load, prefill tok/s on a 512-token prompt and decode
tok/s over 128 tokens (greedy, EOS ignored), best of the iterations after a warm-up.
`--gguf FILE` measures a GGUF file the same way. `--original` runs the same
model and type through mistral.rs (`pip install mistralrs==0.9.5` in its own venv)
in the same session, so both sets of numbers share the machine's state.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OURS = r"""
import json, sys, time
import numpy as np
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0
model, quant, backend, prompt_len, gen_len, iterations, uqff = sys.argv[1:8]
prompt_len, gen_len, iterations = int(prompt_len), int(gen_len), int(iterations)
from mistralrs import load
from mistralrs.backends import get_ops
from mistralrs.engine.params import SamplingParams
get_ops(backend, cpu=True)
before = anon()
start = time.perf_counter()
kwargs = {}
if uqff:
    kwargs["from_uqff"] = uqff
elif quant != "none" and not model.endswith(".gguf"):
    kwargs["isq"] = quant
llm = load(model, backend=backend, cpu=True, **kwargs)
load_s = time.perf_counter() - start
rss = anon() - before
prompt = np.random.default_rng(0).integers(5, llm.vocab_size - 5, prompt_len).tolist()
params = SamplingParams(temperature=0, max_tokens=gen_len, ignore_eos=True)
llm.generate(prompt, params)
prefill, decode = [], []
for _ in range(iterations):
    done = llm.generate(prompt, params)
    prefill.append(done.timing.prefill_tok_s(prompt_len))
    decode.append(done.timing.decode_tok_s(gen_len))
print(json.dumps({"load_s": load_s, "rss_mb": rss / 1e6, "prefill": max(prefill), "decode": max(decode)}))
"""

ORIGINAL = r"""
import json, sys, time
model, quant, prompt_len, gen_len, iterations = sys.argv[1:6]
from mistralrs import CompletionRequest, Runner, Which
start = time.perf_counter()
if model.endswith(".gguf"):
    import os
    which = Which.GGUF(tok_model_id=None, quantized_model_id=os.path.dirname(model),
                       quantized_filename=os.path.basename(model))
    runner = Runner(which=which, max_seqs=1, no_paged_attn=True)
else:
    runner = Runner(which=Which.Plain(model_id=model), in_situ_quant=None if quant == "none" else quant,
                    max_seqs=1, no_paged_attn=True)
load_s = time.perf_counter() - start
prompt = " ".join(f"word{i}" for i in range(int(prompt_len) // 3))
best = {"prefill": 0.0, "decode": 0.0}
for i in range(int(iterations) + 1):
    res = runner.send_completion_request(CompletionRequest(model="default", prompt=prompt,
                                                           max_tokens=int(gen_len), temperature=0.0))
    if i:  # the first is a warm-up
        best["prefill"] = max(best["prefill"], res.usage.avg_prompt_tok_per_sec)
        best["decode"] = max(best["decode"], res.usage.avg_compl_tok_per_sec)
best.update(load_s=load_s, prompt_tokens=res.usage.prompt_tokens, completion_tokens=res.usage.completion_tokens)
print(json.dumps(best))
"""

ORIGINAL_NAMES = {"q8_0": "Q8_0", "q4k": "Q4K", "q4_0": "Q4_0", "q6k": "Q6K", "q5k": "Q5K"}


def measure(python: str, script: str, args: list[str], cwd: str | None = None) -> dict:
    done = subprocess.run([python, "-c", script, *args], capture_output=True, text=True, timeout=1800, cwd=cwd)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(label: str, result: dict) -> str:
    if "error" in result:
        return f"{label:<44} error: {result['error']}"
    rss = f"{result['rss_mb']:7.1f} MB" if "rss_mb" in result else "       -  "
    return (f"{label:<44} load {result['load_s']:6.1f} s  rss {rss}  "
            f"prefill {result['prefill']:7.1f} tok/s  decode {result['decode']:6.1f} tok/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["bench-qwen3", "bench-qwen3-h512"])
    parser.add_argument("--quant", nargs="+", default=["q8_0", "q4k"])
    parser.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    parser.add_argument("--gguf", nargs="*", default=[], help="GGUF files to measure as they are")
    parser.add_argument("--uqff", nargs="*", default=[], help="MODEL_DIR:FILE pairs loaded with --from-uqff")
    parser.add_argument("--original", help="python of a venv with mistralrs==0.9.5 installed")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()
    shape = [str(args.prompt_len), str(args.gen_len), str(args.iterations)]
    print(f"backend {args.backend}, {args.prompt_len}-token prompt, {args.gen_len} generated, "
          f"best of {args.iterations}")
    jobs = [(os.path.abspath(os.path.join(ROOT, "bench-models", m)), q, "") for m in args.models for q in args.quant]
    jobs += [(g, "none", "") for g in args.gguf]
    jobs += [(pair.split(":", 1)[0], "uqff", pair.split(":", 1)[1]) for pair in args.uqff]
    for model, quant, uqff in jobs:
        name = f"{os.path.basename(model)} {quant if not uqff else 'from-uqff ' + uqff}"
        ours = measure(sys.executable, OURS, [model, quant, args.backend, *shape, uqff])
        print(row(f"ours     {name}", ours), flush=True)
        if args.original and not uqff:
            # From another folder: run here, `import mistralrs` would find this checkout instead.
            theirs = measure(args.original, ORIGINAL, [model, ORIGINAL_NAMES.get(quant, quant), *shape],
                             cwd=tempfile.gettempdir())
            print(row(f"mistral.rs 0.9.5 {name}", theirs), flush=True)


if __name__ == "__main__":
    main()
