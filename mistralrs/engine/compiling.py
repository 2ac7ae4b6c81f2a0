"""Whether to compile the decoder layers, and compiling them while the model loads.

Compiling (torch.compile; see backends/torch_compile.py) removes most of the
per-operation overhead of a decode step, at the price of a few seconds of
compiling per shape family the first time a machine runs a model (inductor caches
its output on disk, so later runs start faster). `warm_up` pays that price during
loading, under the load status line, instead of at the user's first token.

The choice: `load(compile=...)`, else the MISTRALRS_COMPILE environment variable
(1/0), else on for the torch backend on the CPU when a C++ compiler is present.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from mistralrs.backends.ops import Ops
from mistralrs.errors import UserError

ENV = "MISTRALRS_COMPILE"
_TRUE, _FALSE = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


# What a compiled load keeps resident beyond an eager one, whatever the model's size: inductor's
# modules (~45 MB once imported: its lowerings, decompositions and kernel templates) and the state
# its first compile sets up (pattern-matcher tables, code caches), with the compiled graphs
# themselves a few MB of it. Measured on the 2-core Xeon VM as RssAnon after `load`, compiled
# minus eager, on the 134.5 M benchmark model: 85 MB in bf16, 91 at q8_0, 89 at q4k
# (tests/test_cli_tune.py checks tune's estimate against a compiled load). That is with inductor's
# on-disk cache warm; the first compile of a model on a machine leaves ~30 MB more. Neither
# torch._dynamo.reset() nor stopping inductor's compile workers after loading frees more than 3 MB.
COMPILED_LAYERS_BYTES = 88_000_000


def missing_compiler() -> str | None:
    """Why compiled layers cannot be built here (inductor writes C++), or None when they can."""
    compiler = os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if compiler is None:
        return "no C++ compiler found (install g++ or clang, or set CXX)"
    return None


def _requested_by_environment() -> bool | None:
    env = os.environ.get(ENV, "").strip().lower()
    if env and env not in _TRUE + _FALSE:
        raise UserError(f"{ENV}={env!r} is not understood: set it to 1 (compile) or 0 (run eagerly).")
    return None if not env else env in _TRUE


def compiles_layers(backend: str, device: str) -> bool:
    """Whether a load on `backend` and `device` ("cpu", "cuda", "metal") compiles its decoder
    layers when not told otherwise: what `compile_setting` decides, without loading a backend."""
    if backend != "torch" or missing_compiler():
        return False  # MLX runs its layers as they are; without a compiler a forced compile is refused
    requested = _requested_by_environment()
    return device == "cpu" if requested is None else requested


def compile_setting(requested: bool | None, ops: Ops) -> bool:
    if requested is None:
        requested = _requested_by_environment()
    reason = ops.compile_unavailable()
    if requested is None:
        # CUDA graphs and Triton kernels have not been verified here, so auto means the CPU.
        return reason is None and ops.device == "cpu"
    if requested and reason:
        raise UserError(f"Compiling the decoder layers was requested, but {reason}. "
                        f"Set {ENV}=0 to run them eagerly.")
    return requested


# Prompt chunks are traced with their row count symbolic (backends/torch_fixed_shapes.py), one
# trace per family of counts that take the same branches: weights leave our streaming kernels
# from 16 rows (torch_cpu_linear.STREAM_UNTIL_ROWS) and torch's quantized kernels take a dense
# path from 64 (torch_quant.DENSE_FROM_ROWS); a short chunk after earlier tokens is a family of
# its own too. So: fresh prompts of 5 (fewer than 16 rows) and 40 (fewer than 64), 300 tokens
# prefilled in chunks of 128, 128 and 44, and 133 in chunks of 128 and 5, each followed by
# decode steps at two positions.
_WARM_PROMPTS = ((5, 5), (40, 40), (300, 128), (133, 128))
_WARM_DECODE_STEPS = 2


def warm_up(model, ops: Ops, status) -> None:
    """Run every compiled shape family once (prefill, chunked prefill, decode) on scratch caches."""
    status.update("compiling the decoder layer for this machine (the first run takes longest)")
    for length, chunk in _WARM_PROMPTS:
        caches = model.make_caches()
        for start in range(0, length, chunk):
            ids = np.ones((1, min(chunk, length - start)), dtype=np.int64)
            model(ops.asarray(ids), caches, last_only=True)
        for _ in range(_WARM_DECODE_STEPS):
            ops.eval(model(ops.asarray(np.ones((1, 1), dtype=np.int64)), caches))
