"""Key/value caches for decoding several sequences in one forward pass.

The rows of a batch share one (rows, heads, capacity, dim) tensor per layer and
are right-aligned: every row writes its next token at the same column `end`,
so a decode step writes with one slice assignment, as the single-sequence
KVCache does. Row i's tokens sit in columns pads[i]..end-1; the columns before
pads[i] are masked out, and rope gets each row's own positions (end - pads[i]).

Sequences join with the cache their own prefill filled (copied in once) and
leave by moving the last row into their place, so the batch stays a prefix of
the tensor and a step never computes on empty rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mistralrs.backends.ops import Ops, Tensor
from mistralrs.models.cache import KVCache


class BatchLayout:
    """Where each row's tokens are; shared by every layer's cache of one batch."""

    def __init__(self, ops: Ops):
        self.ops = ops
        self.end = 0  # the column the next token is written to
        self.pads: list[int] = []  # per row: the first column holding one of its tokens
        self._positions: Tensor | None = None
        self._masks: dict[Any, Any] = {}

    @property
    def rows(self) -> int:
        return len(self.pads)

    def changed(self) -> None:
        """Forget the per-step tensors (rows or columns moved)."""
        self._positions = None
        self._masks.clear()

    @property
    def positions(self) -> Tensor:
        """Each row's position of the token being written: the rope offsets of a decode step."""
        if self._positions is None:
            rows = np.asarray([self.end - pad for pad in self.pads], dtype=np.int32)
            self._positions = self.ops.asarray(rows)
        return self._positions

    def first_column(self, window: int | None) -> int:
        """The first column any row attends to in this step (skips padding every row has)."""
        first = min(self.pads)
        if window is not None:
            # The new token at column end sees the last `window` columns, the same for every row.
            first = max(first, self.end + 1 - window)
        return first

    def mask(self, first: int):
        """(rows, 1, 1, S) boolean mask over columns first..end, or None when no row has padding there."""
        if max(self.pads) <= first:
            return None
        mask = self._masks.get(first)
        if mask is None:
            ops = self.ops
            columns = ops.arange(first, self.end + 1)
            pads = ops.asarray(np.asarray(self.pads, dtype=np.int32))
            mask = (columns[None, :] >= pads[:, None]).reshape(self.rows, 1, 1, self.end + 1 - first)
            self._masks[first] = mask
        return mask

    def rows_beyond(self, limit: int):
        beyond = [self.end - pad > limit for pad in self.pads]
        if all(beyond) or not any(beyond):
            return beyond[0]
        key = ("beyond", limit)
        if key not in self._masks:
            self._masks[key] = self.ops.asarray(np.asarray(beyond)).reshape(self.rows, 1, 1, 1)
        return self._masks[key]

    def advance(self) -> None:
        self.end += 1
        self.changed()


class BatchKVCache:
    """One layer's keys and values for the rows of a batch (see the module docstring)."""

    def __init__(self, layout: BatchLayout, window: int | None):
        self.layout = layout
        self.window = window
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    @property
    def offset(self) -> Tensor:
        return self.layout.positions

    def rows_beyond(self, limit: int):
        """True or False when every row agrees that it holds more than `limit` positions,
        else a (rows, 1, 1, 1) boolean tensor saying which rows do."""
        return self.layout.rows_beyond(limit)

    def update_and_fetch(self, k: Tensor, v: Tensor):
        if k.shape[2] != 1:
            raise ValueError("A batch cache takes one new token per row (prompts are prefilled one by one).")
        layout = self.layout
        rows, col = layout.rows, layout.end
        self.keys[:rows, :, col : col + 1, :] = k
        self.values[:rows, :, col : col + 1, :] = v
        first = layout.first_column(self.window)
        keys = self.keys[:rows, :, first : col + 1, :]
        values = self.values[:rows, :, first : col + 1, :]
        return keys, values, layout.mask(first)


class DecodeBatch:
    """The running sequences' caches as one batch: add a row, remove a row, step."""

    step = 256  # column growth granularity, as KVCache

    def __init__(self, ops: Ops, windows: list[int | None], max_rows: int):
        self.ops = ops
        self.max_rows = max_rows
        self.layout = BatchLayout(ops)
        self.caches = [BatchKVCache(self.layout, window) for window in windows]
        self._row_capacity = 0
        self._column_capacity = 0

    @property
    def rows(self) -> int:
        return self.layout.rows

    def add(self, caches: list[KVCache]) -> int:
        """Append a sequence whose prefill filled `caches` (one per layer); returns its row."""
        layout = self.layout
        length = caches[0].offset
        rows = layout.rows
        end = max(layout.end, length)
        if (self.caches[0].keys is None or rows + 1 > self._row_capacity or end + 1 > self._column_capacity
                or end != layout.end):
            row_capacity = max(rows + 1, min(2 * self._row_capacity, self.max_rows))
            self._relayout(row_capacity, self._columns_for(end + 1), end, caches)
        for batch_cache, cache in zip(self.caches, caches, strict=True):
            batch_cache.keys[rows, :, end - length : end, :] = cache.keys[0, :, :length, :]
            batch_cache.values[rows, :, end - length : end, :] = cache.values[0, :, :length, :]
        layout.pads.append(end - length)
        layout.changed()
        return rows

    def remove(self, row: int) -> None:
        """Drop a row; the last row moves into its place (the caller renumbers that sequence)."""
        layout = self.layout
        last = layout.rows - 1
        if row != last:
            pad, end = layout.pads[last], layout.end
            for cache in self.caches:
                cache.keys[row, :, pad:end, :] = cache.keys[last, :, pad:end, :]
                cache.values[row, :, pad:end, :] = cache.values[last, :, pad:end, :]
            layout.pads[row] = pad
        layout.pads.pop()
        layout.changed()
        if not layout.pads:
            self._release()
        elif min(layout.pads) >= self.step:
            # The longest sequences left: drop the columns no row uses any more.
            new_end = layout.end - min(layout.pads)
            self._relayout(self._row_capacity, self._columns_for(new_end + 1), new_end, None)

    def before_step(self) -> None:
        """Make room for one more column."""
        if self.layout.end + 1 > self._column_capacity:
            needed = max(self.layout.end + 1, 2 * self._column_capacity)
            self._relayout(self._row_capacity, self._columns_for(needed), self.layout.end, None)

    def advance(self) -> None:
        self.layout.advance()

    def _columns_for(self, needed: int) -> int:
        return (needed + self.step - 1) // self.step * self.step

    def _relayout(self, row_capacity: int, column_capacity: int, new_end: int,
                  joining: list[KVCache] | None) -> None:
        """Reallocate every layer's tensors; the live columns move so they end at `new_end`.

        An empty batch takes shapes and dtype from the joining sequence's caches.
        """
        layout, ops = self.layout, self.ops
        rows = layout.rows
        old_first = min(layout.pads) if rows else layout.end
        shift = new_end - layout.end
        for i, cache in enumerate(self.caches):
            source = cache if cache.keys is not None else joining[i]
            k_shape, v_shape = source.keys.shape, source.values.shape
            dtype = ops.dtype_name(source.keys)
            keys = ops.zeros((row_capacity, k_shape[1], column_capacity, k_shape[3]), dtype)
            values = ops.zeros((row_capacity, v_shape[1], column_capacity, v_shape[3]), dtype)
            if cache.keys is not None and rows and layout.end > old_first:
                keys[:rows, :, old_first + shift : new_end, :] = cache.keys[:rows, :, old_first : layout.end, :]
                values[:rows, :, old_first + shift : new_end, :] = cache.values[:rows, :, old_first : layout.end, :]
            cache.keys, cache.values = keys, values
        layout.pads = [pad + shift for pad in layout.pads]
        layout.end = new_end
        layout.changed()
        self._row_capacity, self._column_capacity = row_capacity, column_capacity
        ops.eval(*[t for cache in self.caches for t in (cache.keys, cache.values)])

    def _release(self) -> None:
        for cache in self.caches:
            cache.keys = cache.values = None
        self.layout.end = 0
        self.layout.changed()
        self._row_capacity = self._column_capacity = 0

