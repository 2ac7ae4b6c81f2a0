"""Loading a checkpoint with in-situ quantization, one tensor at a time.

Each projection weight is read from the memory-mapped file as float32, quantized
to numpy blocks and only then kept, so the float model never exists in memory
whole: peak memory stays near the quantized size plus one tensor in flight per
worker. Quantization runs on a small thread pool (numpy releases the GIL in its
kernels), in checkpoint order so progress is honest.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mistralrs.backends.ops import Ops
from mistralrs.errors import UserError
from mistralrs.models.base import Embedding, Linear, Module
from mistralrs.quant import ggml_blocks
from mistralrs.quant.isq import IsqType, TensorPlan, plan_tensor
from mistralrs.quant.safetensors_io import FLOAT_DTYPES, SafetensorsFile

Report = Callable[[str], None]


class IsqPlan:
    """Which checkpoint tensors get quantized and to what; collects notes for the load log."""

    def __init__(self, model: Module, isq: IsqType, ops: Ops | None, imatrix: dict[str, np.ndarray] | None = None):
        self.isq = isq
        self.ops = ops  # None: not loading onto a backend (writing files), so no kernel notes
        self.imatrix = imatrix or {}
        self.notes: dict[str, None] = {}  # ordered set
        self.targets: dict[str, bool] = {}  # name -> takes the promoted type (head, embedding table)
        for name, owner, attr in model.weight_slots():
            if isinstance(owner, (Linear, Embedding)) and attr == "weight":
                # The head and the embedding table (which a tied head shares) get the promoted type.
                self.targets[name] = isinstance(owner, Embedding) or name.split(".")[0] == "lm_head"

    def for_tensor(self, name: str, shape: tuple[int, ...]) -> TensorPlan | None:
        if name not in self.targets or len(shape) != 2:
            return None
        plan = plan_tensor(self.isq, shape[1], is_head=self.targets[name])
        if plan.note:
            self.notes[f"{name.rsplit('.', 1)[0]}: {plan.note}" if self.targets[name] else plan.note] = None
        return plan

    def quantize(self, name: str, values: np.ndarray):
        plan = self.for_tensor(name, values.shape)
        if plan is None or plan.target is None:
            return None
        importance = self.imatrix.get(name)
        if importance is not None and importance.shape != (values.shape[1],):
            raise UserError(f"The importance matrix has {importance.size} values for {name}, which has "
                            f"{values.shape[1]} input columns: it was made for a different model.",
                            param="imatrix")
        if self.imatrix and plan.target.ggml_kind not in ggml_blocks.IMATRIX_KINDS:
            self.notes[f"{plan.target.name} does not use the importance matrix (only q4k and q5k do)"] = None
        q = plan.target.quantize(values, importance)
        if plan.alternatives:
            q = closest(values, importance, [q, *(t.quantize(values, importance) for t in plan.alternatives)])
        layout = self.ops.quantized_layout(q) if self.ops is not None else None
        if layout:
            self.notes[f"{q.label} is {layout}"] = None
        return q


def closest(values: np.ndarray, importance: np.ndarray | None, candidates: list) -> object:
    """The candidate quantization with the least squared error (importance-weighted when given);
    the first wins a tie."""
    weight = 1.0 if importance is None else importance[None, :]

    def error(q) -> float:
        return float(np.sum(np.square(q.dequantize() - values) * weight, dtype=np.float64))

    return min(candidates, key=error)


def quantized_batches(ops: Ops, files: list[str], plan: IsqPlan, dtype: str,
                      sanitize: Callable[[dict], dict], report: Report) -> Iterator[tuple[str, dict]]:
    """(origin, {name: tensor}) batches for `load_into`, quantizing the planned tensors."""

    def convert(item):
        # Runs on a worker thread: numpy only. Backend arrays are made on the caller's thread
        # (an MLX array belongs to the thread whose stream made it).
        origin, name, values = item
        return origin, name, values, plan.quantize(name, values)

    total = sum(1 for _ in plan.targets)
    done = 0
    for origin, name, values, q in _ordered_pool(convert, checkpoint_tensors(files, sanitize)):
        if name in plan.targets:
            done += 1
            report(f"Quantizing to {plan.isq.name}: {done}/{total} tensors")
        yield origin, {name: q if q is not None else ops.asarray(values, dtype)}


def checkpoint_tensors(files: list[str], sanitize: Callable[[dict], dict]) -> Iterator[tuple[str, str, np.ndarray]]:
    """(file name, tensor name, array) for every checkpoint tensor, floats as float32, one at a time."""
    for path in files:
        origin = os.path.basename(path)
        checkpoint = SafetensorsFile(path, "checkpoint file")
        # In storage order, so the memory-mapped file is read front to back.
        for name in sorted(checkpoint.keys(), key=lambda n: checkpoint.entries[n].begin):
            values = checkpoint.array(name)
            if checkpoint.entries[name].dtype in FLOAT_DTYPES:
                values = values.astype(np.float32, copy=False)
            for kept_name, kept in sanitize({name: values}).items():
                yield origin, kept_name, kept


def _ordered_pool(fn, items: Iterable, workers: int = 2, window: int = 4):
    """map(fn, items) on threads, in order, with at most `window` items in flight (bounded memory)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()
