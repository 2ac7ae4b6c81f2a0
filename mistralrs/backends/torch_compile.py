"""torch.compile with inductor for the torch backend: the output head, and the decoder-layer
calls torch_fixed_shapes cannot trace itself.

Eager torch pays a few microseconds of dispatch per operation, and a decoder layer
is ~50 of them around its four matmuls: on the 134.5 M benchmark model that is
more time per token than reading the weights. Compiling one layer's forward turns
the small operations between matmuls (norms, rope, residuals, the gated
activation) into a handful of fused C++ loops. One compiled function serves every
layer of a model, since the layers differ only in their weights.

Float32 one-row matmuls (decode) become inductor's own loops over the weights;
the other matmuls stay oneDNN's, called from the compiled code as they are (see
torch_cpu_linear and `_call_onednn_linear_directly`). Where our streaming kernels
run (torch_cpu_kernels), decode products call them, as registered operators.

Compiling needs a C++ compiler (inductor generates and builds C++ on the CPU). When
there is none, or compiling fails, the layer runs eagerly with one warning;
nothing else changes. Compiled code is cached on disk by inductor, so later runs
start faster than the first.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch._inductor.config as inductor_config

# Layer kinds x (prefill, decode) x (static, dynamic) x batch shapes: more than the default 8.
torch._dynamo.config.cache_size_limit = 64
torch._dynamo.config.accumulated_cache_size_limit = 512
# Inductor splits a loop across threads from 2 x 512 elements. A decode step's fused loops
# (norms, the gated activation: 576-3072 elements) then spend more on waking the other
# thread than on work: on the 2-core VM a compiled silu(gate) * up over 1536 values took
# 180-190 us split across two threads and 46-64 us on one (a busy hour; the gap is the
# wake-up). Prompt chunks (rows x hidden, ~10^5 elements) are still split.
inductor_config.cpp.min_chunk_size = max(inductor_config.cpp.min_chunk_size, 8192)


def _call_onednn_linear_directly() -> None:
    """Let compiled code call oneDNN's linear (`mkldnn._linear_pointwise`) as an external kernel.

    Inductor lowers that operator only for weights its own freezing pass packed (which
    needs them as constants, one compile per layer); any other call fails to lower.
    Registered as a plain fallback, it becomes a direct call in the compiled code's
    wrapper, without the Python dispatch a custom operator costs on every call. This
    process's inductor then never fuses that operator itself: nothing here uses freezing.
    """
    from torch._inductor import lowering

    op = torch.ops.mkldnn._linear_pointwise.default
    if op in lowering.fallbacks:
        return
    lowering.lowerings.pop(op, None)
    lowering.make_fallback(op)


def unavailable_reason() -> str | None:
    """Why this machine cannot compile, or None when it can."""
    from mistralrs.engine.compiling import missing_compiler

    return missing_compiler()


class CompiledStep:
    """`fn` compiled on first use; falls back to `fn` for good if compiling fails."""

    def __init__(self, fn: Callable):
        _call_onednn_linear_directly()
        self.fn = fn
        self.compiled = torch.compile(fn)
        self.failed = False

    def __call__(self, *args):
        if self.failed:
            return self.fn(*args)
        try:
            return self.compiled(*args)
        except Exception as error:  # noqa: BLE001 - any compiler failure means: run eagerly
            # A real error in the inputs raises again from the eager call below; only a
            # failure of the compiler itself leaves the eager result standing.
            out = self.fn(*args)
            self.failed = True
            print(f"mistralrs: compiling the decoder layer failed ({type(error).__name__}: "
                  f"{str(error).splitlines()[0] if str(error) else ''}); running it eagerly.", file=sys.stderr)
            return out
