"""Computing an importance matrix (imatrix) by running the model over calibration text.

For every projection, the mean of x**2 per input column over all the tokens of
the text: what llama.cpp's `llama-imatrix` computes, and what `--calibration-file`
feeds the importance-weighted quantizers. It runs on the full-precision model,
which is loaded for this and dropped before the quantized one is built.
"""

from __future__ import annotations

import numpy as np

from mistralrs.models.base import Linear, Module

# Fusions made at load time, and the checkpoint projections each one stands for.
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def _linear_paths(module: Module, prefix: str = "") -> dict[int, str]:
    paths = {}
    for name, child in module.children():
        if isinstance(child, Linear):
            paths[id(child)] = prefix + name
        paths.update(_linear_paths(child, f"{prefix}{name}."))
    return paths


def collect_imatrix(model, ops, token_ids: list[int], chunk: int = 512) -> dict[str, np.ndarray]:
    """{checkpoint weight name: mean x**2 per input column} over `token_ids`."""
    paths = _linear_paths(model)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def observe(linear: Linear, x) -> None:
        values = ops.to_numpy(ops.astype(x, "float32")).reshape(-1, x.shape[-1]).astype(np.float64)
        path = paths[id(linear)]
        sums[path] = sums.get(path, 0) + (values**2).sum(axis=0)
        counts[path] = counts.get(path, 0) + values.shape[0]

    Linear.observer = observe
    try:
        caches = model.make_caches()
        for start in range(0, len(token_ids), chunk):
            ids = np.asarray(token_ids[start : start + chunk], dtype=np.int64)[None, :]
            ops.eval(model(ops.asarray(ids), caches))
    finally:
        Linear.observer = None
    imatrix = {}
    for path, total in sums.items():
        mean = (total / counts[path]).astype(np.float32)
        module, _, leaf = path.rpartition(".")
        for name in (leaf, *FUSED.get(leaf, ())):
            imatrix[f"{module}.{name}.weight" if module else f"{name}.weight"] = mean
    return imatrix
