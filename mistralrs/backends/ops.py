"""The tensor-op protocol that every model is written against.

Models never import torch or mlx. They receive an `Ops` object and use it for
everything the two libraries name or compute differently; for the rest they use
the operators both share (`+ - * / @`, indexing and slice assignment,
`.shape`, `.reshape`, `.dtype`).

Conventions shared by every backend:
- Tensors are whatever the backend uses (torch.Tensor, mx.array).
- dtypes are named by strings: "float32", "bfloat16", "float16" (plus the
  integer names "int32", "int64", "uint8" where a helper needs them).
- Attention tensors are laid out (batch, heads, length, head_dim).
- A mask is None (attend to everything), the string "causal" (the query block
  sits at the end of the key block, so query i sees keys 0..S-L+i), or a
  boolean array of shape (L, S) or (B, 1, L, S) where True means "may attend".
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from mistralrs.quant.qtensor import QuantizedTensor

Tensor = Any  # a torch.Tensor or an mx.array, depending on the backend

FLOAT_DTYPES = ("float32", "bfloat16", "float16")


class Ops(ABC):
    name: str  # "torch" | "mlx"
    device: str  # human-readable: "cpu", "cuda:0", "metal", ...
    # The model's activation dtype, set by the loader; quantized weights are packed for it.
    compute_dtype: str = "float32"
    # Whether `compile` really compiles (set by the loader; see engine.api.load's `compile`).
    compile_steps: bool = False
    # Whether computation waits for `eval` (MLX): then only what is evaluated is computed.
    lazy: bool = False

    # ---- data --------------------------------------------------------------
    @abstractmethod
    def asarray(self, array: np.ndarray | list, dtype: str | None = None) -> Tensor:
        """Copy host data to the device (dtype None keeps numpy's)."""

    @abstractmethod
    def to_numpy(self, x: Tensor) -> np.ndarray:
        """Bring a tensor to the host; low-precision floats come back as float32."""

    @abstractmethod
    def astype(self, x: Tensor, dtype: str) -> Tensor: ...

    @abstractmethod
    def dtype_name(self, x: Tensor) -> str:
        """The string name of a tensor's dtype ("bfloat16", ...)."""

    @abstractmethod
    def zeros(self, shape: tuple[int, ...], dtype: str) -> Tensor: ...

    @abstractmethod
    def arange(self, start: int, stop: int) -> Tensor:
        """int32/int64 positions start..stop-1."""

    def eval(self, *xs: Tensor) -> None:
        """Force lazy computation (MLX); a no-op for eager backends."""

    def async_eval(self, *xs: Tensor) -> None:
        """Start computing without waiting (MLX); a no-op for eager backends."""

    def synchronize(self) -> None:
        """Wait for queued device work (CUDA, Metal); used by timers."""

    @abstractmethod
    def item(self, x: Tensor) -> float | int: ...

    @abstractmethod
    def tolist(self, x: Tensor) -> list: ...

    # ---- weights -----------------------------------------------------------
    @abstractmethod
    def load_safetensors(self, path: str, dtype: str | None) -> dict[str, Tensor]:
        """Memory-map one safetensors file; float tensors are cast to `dtype` when given."""

    def prepare_linear(self, weight: Tensor) -> Tensor:
        """A chance to re-lay a linear weight once at load time for faster matmuls."""
        return weight

    def prepare_quantized_linear(self, weight: QuantizedTensor) -> Tensor:
        """Pack a quantized weight (numpy blocks) into what this backend's `linear` runs.

        The fallback dequantizes to `compute_dtype`: correct, but neither smaller nor
        faster; backends override it with real kernels.
        """
        return self.prepare_linear(self.asarray(weight.dequantize(), self.compute_dtype))

    def prepare_quantized_embedding(self, weight: QuantizedTensor) -> Tensor:
        """Like `prepare_quantized_linear`, but also usable by `embedding` for row lookups."""
        return self.asarray(weight.dequantize(), self.compute_dtype)

    def quantized_layout(self, weight: QuantizedTensor) -> str | None:
        """How `prepare_quantized_linear` will run this format when not exactly, for the load log."""
        return None

    # ---- shape -------------------------------------------------------------
    @abstractmethod
    def transpose(self, x: Tensor, axes: tuple[int, ...]) -> Tensor: ...

    @abstractmethod
    def concat(self, xs: Iterable[Tensor], axis: int) -> Tensor: ...

    @abstractmethod
    def split(self, x: Tensor, sizes: list[int], axis: int) -> list[Tensor]:
        """Cut along `axis` into consecutive pieces of the given sizes."""

    # ---- layers ------------------------------------------------------------
    @abstractmethod
    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """x @ weight.T + bias, weight laid out (out_features, in_features)."""

    @abstractmethod
    def embedding(self, ids: Tensor, table: Tensor) -> Tensor: ...

    @abstractmethod
    def rms_norm(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        """x / rms(x) * weight, the reduction in float32, the result in x's dtype."""

    @abstractmethod
    def rope(self, x: Tensor, offset: int, inv_freq: Tensor, scale: float = 1.0) -> Tensor:
        """Rotate-half RoPE on the first 2*len(inv_freq) features of x (B, H, L, D).

        Positions are offset..offset+L-1; `scale` multiplies cos and sin (the
        attention factor of longrope / yarn). `inv_freq` is a float32 tensor.
        `offset` is an int, or an int32 tensor (B,) of per-row first positions
        (a batch of sequences at different lengths).
        """

    @abstractmethod
    def attention(self, q: Tensor, k: Tensor, v: Tensor, scale: float, mask: Any) -> Tensor:
        """Softmax(q k^T * scale + mask) v with grouped-query heads broadcast.

        q: (B, Hq, L, D); k, v: (B, Hkv, S, D) with Hq a multiple of Hkv.
        """

    def kv_cache_dtype(self, compute_dtype: str) -> str:
        """The dtype the KV cache stores. Attention over the cache runs in it (q is cast to match);
        a fresh prompt attends to its own keys, in the compute dtype (KVCache.update_and_fetch)."""
        return compute_dtype

    @abstractmethod
    def causal_mask(self, length: int, total: int, window: int | None) -> Tensor:
        """Boolean (L, S) mask: query i (at position S-L+i) sees key j when
        j <= S-L+i and, with a window, j > S-L+i-window."""

    @abstractmethod
    def silu(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def gelu_tanh(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def gelu(self, x: Tensor) -> Tensor:
        """The exact (erf) GELU."""

    @abstractmethod
    def tanh(self, x: Tensor) -> Tensor: ...

    # ---- sampling ----------------------------------------------------------
    @abstractmethod
    def log_softmax(self, x: Tensor, axis: int = -1) -> Tensor: ...

    @abstractmethod
    def softmax(self, x: Tensor, axis: int = -1) -> Tensor: ...

    @abstractmethod
    def argmax(self, x: Tensor, axis: int = -1) -> Tensor: ...

    @abstractmethod
    def topk(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The k largest values along the last axis and their indices, largest first."""

    @abstractmethod
    def sort_descending(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Values sorted largest first along the last axis, and their indices."""

    @abstractmethod
    def cumsum(self, x: Tensor, axis: int = -1) -> Tensor: ...

    @abstractmethod
    def where(self, cond: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor: ...

    @abstractmethod
    def take(self, x: Tensor, indices: Tensor, axis: int = -1) -> Tensor:
        """Gather along one axis (same semantics as numpy.take_along_axis for 1-D rows)."""

    @abstractmethod
    def scatter(self, x: Tensor, indices: Tensor, values: Tensor, axis: int = -1) -> Tensor:
        """A copy of x with x[..., indices] = values along the last axis."""

    @abstractmethod
    def make_rng(self, seed: int | None) -> Any:
        """A random stream; the same seed gives the same samples on this backend."""

    @abstractmethod
    def gumbel(self, shape: tuple[int, ...], rng: Any) -> Tensor:
        """Standard Gumbel noise in float32; argmax(logits + noise) samples softmax(logits)."""

    # ---- speed -------------------------------------------------------------
    def compile(self, fn: Callable, fixed_shapes: bool = False, varying_rows: bool = False) -> Callable | None:
        """`fn` compiled when `compile_steps` is set and the backend can; None otherwise.

        Models compile functions of a module and its inputs (`run_layers(layers, x, caches)`,
        the output head), which must keep working when called eagerly: a backend may fall
        back to them at any time.

        `fixed_shapes`: the calls repeat their shapes step after step (decode). The backend
        may then trace `fn` once per shape and skip re-checking the first argument's objects
        on later calls, so that argument's tensors must not change once loaded; fields an
        argument's class lists in `symbolic_fields` (the cache's position and capacity) may
        change from call to call.

        `varying_rows`: as `fixed_shapes`, for calls whose first input after the module is a
        (batch, rows, hidden) tensor with a row count that changes from call to call (prompt
        chunks); the backend keeps the rows symbolic rather than tracing each count.
        """
        return None

    def compile_unavailable(self) -> str | None:
        """Why `compile` cannot compile on this machine (None when it can)."""
        return "this backend runs its layers as they are"

    def set_threads(self, n: int | None) -> None:
        """Use n CPU threads for compute (None: the backend's own choice)."""

    def memory_bytes(self) -> int | None:
        """Bytes of device memory in use (weights plus caches), when the backend knows."""
        return None


def default_cpu_threads() -> int:
    """Physical cores when we can tell, else the logical count, leaving SMT siblings idle.

    Oversubscribing a small machine is catastrophic for tiny GEMMs, so never more
    threads than the CPUs this process may run on.
    """
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        available = os.cpu_count() or 1
    return max(1, available)
