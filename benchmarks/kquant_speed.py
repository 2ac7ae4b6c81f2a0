"""Quantizer speed per GGML type, in ns per weight, on a fixed seeded matrix.

    python benchmarks/kquant_speed.py [--shape 1536 512] [--repeat 3] [--types Q4_K Q6_K]
                                      [--chunk-blocks 1024 [--threads 2]]

Quantizes a seeded N(0, 1) float32 matrix with `ggml_blocks.quantize` (the path --isq takes),
best of `--repeat` runs, for every K-quant type (and Q8_0/Q4_0 for scale), then again with a
seeded imatrix for the types that take one. `--chunk-blocks N` also times the K-quant
quantizers called directly on N-block slices (on `--threads` threads), to show what a larger
chunk than `ggml_blocks._CHUNK_ELEMENTS` (128 K-quant blocks) and a thread pool would give.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mistralrs.quant import ggml_blocks as gb  # noqa: E402
from mistralrs.quant import ggml_kquants as kq  # noqa: E402

TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "Q4_0", "Q8_0")


def ns_per_weight(fn, args, repeat: int, weights: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best / weights * 1e9


def in_slices(fn, blocks, qw, n, threads):
    def run(i):
        return fn(blocks[i : i + n]) if qw is None else fn(blocks[i : i + n], qw[i : i + n])

    starts = range(0, len(blocks), n)
    if threads <= 1:
        return [run(i) for i in starts]
    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL inside its loops
        return list(pool.map(run, starts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(1536, 512))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", nargs="+", default=list(TYPES))
    ap.add_argument("--chunk-blocks", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="threads over the --chunk-blocks slices")
    args = ap.parse_args()
    rows, cols = args.shape
    w = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    im = (np.random.default_rng(1).random(cols).astype(np.float32) + 0.1) ** 2
    blocks = w.reshape(-1, 256)
    qw = np.broadcast_to(im.reshape(1, -1, 256), (rows, cols // 256, 256)).reshape(-1, 256)
    n = args.chunk_blocks
    print(f"{rows}x{cols} float32, best of {args.repeat}, ns/weight")
    head = f"{'type':6s} {'plain':>8s} {'imatrix':>8s}"
    if n:
        head += f" {f'{n}-blk x{args.threads}':>12s} {'imatrix':>8s}"
    print(head)
    for kind in args.types:
        cells = [ns_per_weight(gb.quantize, (w, kind), args.repeat, w.size)]
        if kind in gb.IMATRIX_KINDS:
            cells.append(ns_per_weight(gb.quantize, (w, kind, im), args.repeat, w.size))
        else:
            cells.append(None)
        if n and kind in kq.QUANTIZE:
            cells.append(
                ns_per_weight(
                    in_slices, (kq.QUANTIZE[kind], blocks, None, n, args.threads), args.repeat, w.size
                )
            )
            if kind in gb.IMATRIX_KINDS:
                cells.append(
                    ns_per_weight(
                        in_slices, (kq.QUANTIZE[kind], blocks, qw, n, args.threads), args.repeat, w.size
                    )
                )
        text = [f"{c:8.1f}" if c is not None else " " * 8 for c in cells[:2]]
        text += [f"{c:12.1f}" if i == 0 else f"{c:8.1f}" for i, c in enumerate(cells[2:])]
        print(f"{kind:6s} " + " ".join(text), flush=True)


if __name__ == "__main__":
    main()
