"""Quantizer speed per GGML type, in ns per weight, on a fixed seeded matrix.

    python benchmarks/kquant_speed.py [--shape 1536 512] [--repeat 3] [--types Q4_K Q6_K]
                                      [--threads N]

Quantizes a seeded N(0, 1) float32 matrix, best of `--repeat` runs, for every K-quant type
(and Q4_0/Q8_0 for scale), without and with a seeded imatrix (for the types that take one):

- `blocks`: through `ggml_blocks.quantize`, the path --isq takes, which hands the quantizer
  `ggml_blocks._CHUNK_ELEMENTS` worth of blocks (128 K-quant blocks) at a time;
- `whole`: the K-quant quantizer called once on all the blocks; it works through them in
  `ggml_kquants.CHUNK_BLOCKS`-block slices on up to `--threads` threads (default: the
  module's MAX_THREADS, capped by the cores this process may use).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(1536, 512))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", nargs="+", default=list(TYPES))
    ap.add_argument("--threads", type=int, default=0, help="threads for the `whole` columns")
    args = ap.parse_args()
    if args.threads:
        kq.MAX_THREADS = args.threads
    rows, cols = args.shape
    w = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    im = (np.random.default_rng(1).random(cols).astype(np.float32) + 0.1) ** 2
    blocks = w.reshape(-1, 256)
    qw = np.broadcast_to(im.reshape(1, -1, 256), (rows, cols // 256, 256)).reshape(-1, 256)
    print(f"{rows}x{cols} float32, best of {args.repeat}, ns/weight; `whole` on {kq._threads()} thread(s)")
    print(f"{'type':6s} {'blocks':>8s} {'+imatrix':>8s} {'whole':>8s} {'+imatrix':>8s}")
    for kind in args.types:
        cells = [ns_per_weight(gb.quantize, (w, kind), args.repeat, w.size)]
        imat = kind in gb.IMATRIX_KINDS
        cells.append(ns_per_weight(gb.quantize, (w, kind, im), args.repeat, w.size) if imat else None)
        whole = kq.QUANTIZE.get(kind)
        cells.append(ns_per_weight(whole, (blocks,), args.repeat, w.size) if whole else None)
        cells.append(ns_per_weight(whole, (blocks, qw), args.repeat, w.size) if whole and imat else None)
        print(f"{kind:6s} " + " ".join(f"{c:8.1f}" if c is not None else " " * 8 for c in cells), flush=True)


if __name__ == "__main__":
    main()
