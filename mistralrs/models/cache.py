"""Per-layer key/value caches.

A cache is preallocated and grown in steps, written by slice assignment, and
read as a view; nothing is concatenated per token. The cache also owns the
attention mask, because only it knows how many positions precede the new ones.
"""

from __future__ import annotations

from typing import Any

from mistralrs.backends.ops import Ops, Tensor


class KVCache:
    step = 256  # growth granularity in positions
    # What changes from one decode step to the next: the position, and the capacity (dim 2)
    # when the cache grows. Compiled code keeps these symbolic (Ops.compile, fixed_shapes).
    symbolic_fields = {"offset": (), "keys": (2,), "values": (2,)}

    def __init__(self, ops: Ops, window: int | None = None, heads: int | None = None, head_dim: int | None = None):
        self.ops = ops
        self.window = window  # sliding-window layers only attend to the last `window` positions
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.offset = 0  # positions stored so far
        self.heads, self.head_dim = heads, head_dim  # lets reserve() allocate before the first keys

    def _grow(self, k: Tensor, v: Tensor, needed: int) -> None:
        self._allocate(k.shape[0], k.shape[1], k.shape[-1], v.shape[-1], self.ops.dtype_name(k), needed)

    def _allocate(self, batch: int, heads: int, k_dim: int, v_dim: int, dtype: str, needed: int) -> None:
        capacity = 0 if self.keys is None else self.keys.shape[2]
        # Always strictly more room than needed: a cache exactly as long as its prompt would be
        # a shape relation that compiled code specializes on (and recompiles for).
        new_capacity = max(needed + 1, 2 * capacity)
        new_capacity = (new_capacity + self.step - 1) // self.step * self.step
        dtype = self.ops.kv_cache_dtype(dtype)
        keys = self.ops.zeros((batch, heads, new_capacity, k_dim), dtype)
        values = self.ops.zeros((batch, heads, new_capacity, v_dim), dtype)
        if self.keys is not None and self.offset:
            keys[:, :, : self.offset, :] = self.keys[:, :, : self.offset, :]
            values[:, :, : self.offset, :] = self.values[:, :, : self.offset, :]
        self.keys, self.values = keys, values

    def reserve(self, length: int) -> None:
        """Make room for `length` more positions of one sequence before the layers run.

        Compiled layers call this first, so the code they trace never allocates.
        """
        end = self.offset + length
        if self.keys is None and self.heads is not None:
            self._allocate(1, self.heads, self.head_dim, self.head_dim, self.ops.compute_dtype, end)
        elif self.keys is not None and end >= self.keys.shape[2]:  # strictly more room, as in _allocate
            self._grow(self.keys, self.values, end)

    def update_and_fetch(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Any]:
        """Store the new positions; return (keys, values, mask) to attend over."""
        length = k.shape[2]
        start, end = self.offset, self.offset + length
        if self.keys is None or end > self.keys.shape[2]:
            self._grow(k, v, end)
        self.keys[:, :, start:end, :] = k
        self.values[:, :, start:end, :] = v
        self.offset = end
        if length > 1 and start == 0:
            # A fresh prompt attends to its own keys only: use them as computed, in the compute
            # dtype, not read back from the cache, which is float32 on CPU for decode's sake
            # (a bf16 prompt's attention runs 3x faster in bf16 there). Decode (length 1) never
            # takes this branch, so its compiled step holds no condition on the position.
            return k, v, self._mask(length, length)
        first = 0
        if self.window is not None and length == 1 and end > self.window:
            # Decode on a sliding-window layer: the window is just the last keys.
            first = end - self.window
        keys = self.keys[:, :, first:end, :]
        values = self.values[:, :, first:end, :]
        return keys, values, self._mask(length, end - first)

    def _mask(self, length: int, total: int):
        if length == 1:
            return None
        if self.window is not None and total > self.window:
            return self.ops.causal_mask(length, total, self.window)
        return "causal"

    def rows_beyond(self, limit: int):
        """Whether the sequence already holds more than `limit` positions (see BatchKVCache)."""
        return self.offset > limit

    def trim(self, n: int) -> None:
        """Forget the last n positions (they will be overwritten)."""
        self.offset = max(0, self.offset - n)

    @property
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        per = 2 if self.ops.dtype_name(self.keys) in ("bfloat16", "float16") else 4
        return 2 * per * int(self.keys.shape[0] * self.keys.shape[1] * self.keys.shape[2] * self.keys.shape[3])
