"""The building blocks every architecture shares.

A model is a tree of plain Python objects. Attribute paths equal the checkpoint's
tensor names (`model.layers.3.self_attn.q_proj.weight`), so loading is a walk over
the checkpoint keys with no mapping table. A weight that has not been loaded yet
holds a `Missing` placeholder that remembers the shape it must have.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from mistralrs.backends.ops import Ops, Tensor
from mistralrs.quant.qtensor import AfqTensor, GgmlTensor, concat_rows

QUANTIZED = (GgmlTensor, AfqTensor)


@dataclass(frozen=True)
class Missing:
    """A weight slot that the checkpoint must fill, with its expected shape."""

    shape: tuple[int, ...]
    optional: bool = False  # e.g. lm_head.weight when the embeddings are tied


class Module:
    """A node of the model tree. Subclasses set `self.<name> = Missing(shape)` for weights."""

    def __init__(self, ops: Ops):
        self.ops = ops

    def children(self) -> Iterator[tuple[str, Module]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, list) and value and isinstance(value[0], Module):
                for i, child in enumerate(value):
                    yield f"{name}.{i}", child

    def weight_slots(self, prefix: str = "") -> Iterator[tuple[str, Module, str]]:
        """(checkpoint name, owning module, attribute) for every weight in the tree."""
        for name, value in vars(self).items():
            if name == "ops":
                continue
            if isinstance(value, Missing) or (not isinstance(value, (Module, list)) and _is_tensor(value)):
                yield prefix + name, self, name
        for name, child in self.children():
            yield from child.weight_slots(f"{prefix}{name}.")

    def finalize(self) -> None:
        """Called bottom-up once every weight is loaded (fusing projections, caching constants)."""
        for _, child in self.children():
            child.finalize()


def _is_tensor(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


class Linear(Module):
    # Called as observer(linear, x) on every call while set: how an importance matrix is
    # collected from calibration text (engine.calibration). None otherwise.
    observer = None

    def __init__(self, ops: Ops, in_features: int, out_features: int, bias: bool = False):
        super().__init__(ops)
        self.weight = Missing((out_features, in_features))
        self.bias = Missing((out_features,)) if bias else None

    def __call__(self, x: Tensor) -> Tensor:
        if Linear.observer is not None:
            Linear.observer(self, x)
        return self.ops.linear(x, self.weight, self.bias)

    def finalize(self) -> None:
        if isinstance(self.weight, QUANTIZED):
            self.weight = self.ops.prepare_quantized_linear(self.weight)
        else:
            self.weight = self.ops.prepare_linear(self.weight)


def fuse_linears(ops: Ops, parts: list[Linear]) -> Linear:
    """One Linear whose output is the concatenation of `parts` (one matmul instead of several).

    At batch-1 decode the cost of a matmul is dominated by reading its weight and
    by per-call overhead; fusing q/k/v and gate/up removes the overhead. Quantized
    parts fuse row-wise in their blocks (the in-situ plan gives them one format).
    """
    fused = Linear.__new__(Linear)
    Module.__init__(fused, ops)
    weights = [p.weight for p in parts]
    if any(isinstance(w, QUANTIZED) for w in weights):
        fused.weight = concat_rows(weights)
        if fused.weight is None:
            raise ValueError("fuse_linears: parts quantized to different formats cannot be fused")
    else:
        fused.weight = ops.concat(weights, axis=0)
    biases = [p.bias for p in parts]
    fused.bias = None if all(b is None for b in biases) else ops.concat(biases, axis=0)
    return fused


class Embedding(Module):
    def __init__(self, ops: Ops, vocab_size: int, dim: int):
        super().__init__(ops)
        self.dim = dim
        self.weight = Missing((vocab_size, dim))

    def finalize(self) -> None:
        if isinstance(self.weight, QUANTIZED):
            # One quantized table serves both row lookups and, when tied, the output head.
            self.weight = self.ops.prepare_quantized_embedding(self.weight)

    def __call__(self, ids: Tensor) -> Tensor:
        return self.ops.embedding(ids, self.weight)

    def as_linear(self, x: Tensor) -> Tensor:
        """The tied output head: logits = x @ embedding.T."""
        return self.ops.linear(x, self.weight)


class RMSNorm(Module):
    """RMSNorm; `offset=1.0` is Gemma's convention (the checkpoint stores w - 1)."""

    def __init__(self, ops: Ops, dim: int, eps: float, offset: float = 0.0):
        super().__init__(ops)
        self.weight = Missing((dim,))
        self.eps = eps
        self.offset = offset

    def finalize(self) -> None:
        if self.offset:
            # Fold Gemma's "1 + w" into the weight once, in float32 before rounding,
            # instead of adding it on every call.
            dtype = self.ops.dtype_name(self.weight)
            self.weight = self.ops.astype(self.ops.astype(self.weight, "float32") + self.offset, dtype)
            self.offset = 0.0

    def __call__(self, x: Tensor) -> Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)
