"""Throughput and time to first token of `mistralrs serve` under 1, 4, 8 and 16 concurrent streaming clients.

    python benchmarks/serve_concurrency.py [MODEL_FOLDER] [--backend torch|mlx] [--clients 1 4 8 16]

Starts the server as a subprocess (so clients and engine do not share one
interpreter lock) on the 134.5 M-parameter benchmark model by default, built
with ../shared/bench/make_models.py into bench-models/ when it is missing.
Each client is a thread with the official `openai` client streaming chat
completions back to back; every answer is `--max-tokens` long (EOS ignored).
Prints, per concurrency level, the aggregate generated tokens/s over the
level's wall time and the time-to-first-token percentiles. With continuous
batching, aggregate throughput should grow with the number of clients while
single-client speed stays that of one stream. A busy machine skews absolutes.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAKE_MODELS = os.path.join(ROOT, "..", "shared", "bench", "make_models.py")
DEFAULT_MODEL = os.path.join(ROOT, "bench-models", "bench-qwen3")
TOPICS = ["the sea", "a mountain", "bread", "trains", "a library", "rain", "chess", "the moon",
          "bees", "a lighthouse", "winter", "maps", "clocks", "gardens", "rivers", "music"]


def ensure_model(folder: str) -> None:
    if os.path.exists(os.path.join(folder, "config.json")):
        return
    if os.path.abspath(folder) != os.path.abspath(DEFAULT_MODEL):
        sys.exit(f"{folder} has no config.json: pass a model folder.")
    print("building bench-qwen3 with make_models.py ...", file=sys.stderr)
    subprocess.run([sys.executable, MAKE_MODELS, "--out", os.path.dirname(folder), "--only", "bench-qwen3"],
                   check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "mistralrs.cli.main", "serve", "-m", args.model, "--cpu",
               "--backend", args.backend, "--dtype", args.dtype, "--host", "127.0.0.1", "-p", str(port),
               "--max-seqs", str(args.max_seqs)]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"serve exited early:\n{process.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    sys.exit("serve did not answer /health within 300 s")


def one_request(client, topic: str, max_tokens: int) -> tuple[float, int]:
    """(time to first token, generated tokens) of one streamed chat completion."""
    started = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": f"Write a long, detailed story about {topic}."}],
        max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})
    for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        if first is None and delta is not None and (delta.content or getattr(delta, "reasoning_content", None)):
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return (first if first is not None else time.perf_counter() - started), tokens


def run_level(base_url: str, clients: int, rounds: int, max_tokens: int) -> dict:
    import openai

    results: list[tuple[float, int]] = []
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=3600)
        for r in range(rounds):
            outcome = one_request(client, TOPICS[(index + r) % len(TOPICS)], max_tokens)
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ttfts = sorted(t for t, _ in results)
    tokens = sum(n for _, n in results)
    return {"clients": clients, "requests": len(results), "wall": wall, "tokens": tokens,
            "tok_s": tokens / wall, "ttft_p50": percentile(ttfts, 50), "ttft_p95": percentile(ttfts, 95)}


def percentile(sorted_values: list[float], p: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(p) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="model folder (default: bench-qwen3)")
    parser.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    parser.add_argument("--dtype", default="bf16", choices=["auto", "bf16", "f16", "f32"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=1, help="requests each client sends, one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-seqs", type=int, default=32)
    args = parser.parse_args()
    ensure_model(args.model)
    port = free_port()
    process = start_server(args, port)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        run_level(base_url, 1, 1, 8)  # warm-up: allocator, kernels, caches
        print(f"model {os.path.basename(os.path.normpath(args.model))}, backend {args.backend}, dtype {args.dtype}, "
              f"{args.max_tokens} tokens per answer, {args.rounds} request(s) per client, --max-seqs {args.max_seqs}")
        print(f"{'clients':>7} {'requests':>8} {'wall s':>8} {'tokens':>7} {'agg tok/s':>10} "
              f"{'TTFT p50 s':>11} {'TTFT p95 s':>11}")
        baseline = None
        for clients in args.clients:
            row = run_level(base_url, clients, args.rounds, args.max_tokens)
            baseline = baseline or row["tok_s"]
            print(f"{row['clients']:>7} {row['requests']:>8} {row['wall']:>8.1f} {row['tokens']:>7} "
                  f"{row['tok_s']:>10.1f} {row['ttft_p50']:>11.3f} {row['ttft_p95']:>11.3f}"
                  f"   ({row['tok_s'] / baseline:.1f}x one client)", flush=True)
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
