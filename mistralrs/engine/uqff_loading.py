"""Loading a model from UQFF files (`--from-uqff`): quantized layers as stored, the rest beside them.

A UQFF set holds the quantized projections (and, since UQFF 1.2, the embedding
table) in backend-free blocks; every other tensor (norms, anything left
unquantized) is in `residual.safetensors` next to the set. Each layer goes to
the backend as it is: the same numpy blocks that `--isq` would have produced, so
both paths give bit-identical weights, and a set written on one backend loads on
the other (each maps the format onto its own kernels).

Without a residual file (sets from other tools), the remaining tensors come from
the model folder's own checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from mistralrs.backends.ops import Ops
from mistralrs.engine.weights import read_safetensors, safetensors_files
from mistralrs.errors import ModelLoadError
from mistralrs.models.base import Embedding, Linear, Module
from mistralrs.quant.uqff import RESIDUAL_NAME, UqffReader, check_model_shapes, open_uqff, read_residual


def layer_shapes(model: Module) -> dict[str, tuple[int, ...]]:
    """{module path: (out, in)} for every weight a UQFF layer may fill."""
    return {name[: -len(".weight")]: tuple(getattr(owner, attr).shape)
            for name, owner, attr in model.weight_slots()
            if isinstance(owner, (Linear, Embedding)) and attr == "weight"}


def open_for_model(spec: str, folder: str, model: Module) -> UqffReader:
    reader = open_uqff(spec, base_dir=folder)
    check_model_shapes(reader, layer_shapes(model))  # a UQFF made for another model fails here
    return reader


def uqff_batches(ops: Ops, reader: UqffReader, folder: str, dtype: str) -> Iterator[tuple[str, dict]]:
    """(origin, {name: tensor}) batches for `load_into`: the layers, then the residual tensors."""
    provided: set[str] = set()
    for key in reader.keys():
        layer = reader.layer(key)
        weights = {f"{key}.weight": layer.weight if not isinstance(layer.weight, np.ndarray)
                   else ops.asarray(layer.weight, dtype)}
        if layer.bias is not None:
            weights[f"{key}.bias"] = ops.asarray(layer.bias, dtype)
        provided.update(weights)
        yield layer.file.name, weights
    residual = reader.files[0].parent / RESIDUAL_NAME
    if residual.is_file():
        tensors = read_residual(residual)
        yield residual.name, {name: ops.asarray(np.asarray(t), dtype if t.dtype.kind == "f" else None)
                              for name, t in tensors.items() if name not in provided}
        return
    try:
        files = safetensors_files(folder)
    except ModelLoadError:
        raise ModelLoadError(
            f"The UQFF set {reader.files[0].name} has no {RESIDUAL_NAME} beside it and {folder} has no "
            "checkpoint to take the other weights (norms) from. Keep residual.safetensors next to the "
            "UQFF files, as `mistralrs quantize` writes it."
        ) from None
    for path, weights in read_safetensors(ops, files, dtype):
        yield os.path.basename(path), {k: v for k, v in weights.items() if k not in provided}
