"""The MLX backend: Metal on Apple Silicon, else MLX's CPU backend (`mlx[cpu]` on Linux)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mistralrs.backends import mlx_quant
from mistralrs.backends.ops import Ops, Tensor, default_cpu_threads

_DTYPES = {
    "float32": mx.float32,
    "bfloat16": mx.bfloat16,
    "float16": mx.float16,
    "int32": mx.int32,
    "int64": mx.int64,
    "uint8": mx.uint8,
    "uint32": mx.uint32,
    "bool": mx.bool_,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


# Prompt products split across CPU streams only with at least this many rows per stream: below
# that the split costs more than it saves.
MIN_ROWS_PER_STREAM = 16
# ... and products with fewer rows split their output features, from this many per stream.
MIN_OUTPUTS_PER_STREAM = 256


class MlxRng:
    """A random stream: an MLX key that is split on every draw.

    MLX keys are pure values, so the stream is the chain of keys; the same seed
    walks the same chain and gives the same samples.
    """

    def __init__(self, seed: int):
        self.key = mx.random.key(seed)

    def next_key(self) -> mx.array:
        self.key, sub = mx.random.split(self.key)
        return sub


class MlxOps(Ops):
    name = "mlx"
    lazy = True

    def __init__(self, cpu: bool = False):
        if cpu or mx.default_device() != mx.gpu:
            mx.set_default_device(mx.cpu)
            self.device = "cpu"
        else:
            self.device = "metal" if mx.metal.is_available() else "gpu"
        # inv_freq -> 1/inv_freq for mx.fast.rope, keyed by identity. The entry holds
        # the inv_freq array itself so its id cannot be reused while cached.
        self._rope_periods: dict[int, tuple[mx.array, mx.array]] = {}
        # MLX's CPU backend runs each stream's ops on one thread (mlx[cpu] on Linux links the
        # single-threaded reference BLAS), but ops on different streams run at once: products
        # and prompt attention are split across one CPU stream per core, prompts by rows
        # (`_across_streams`), one-row products by output features (`_across_output_streams`).
        self.stream_count = default_cpu_threads() if self.device == "cpu" else 1
        self._thread_streams = threading.local()

    # ---- data --------------------------------------------------------------
    def asarray(self, array, dtype=None):
        # MLX has no float64 on the GPU, so numpy float64 arrives as float32.
        x = mx.array(np.asarray(array))
        return x if dtype is None else x.astype(_DTYPES[dtype])

    def to_numpy(self, x):
        if x.dtype in (mx.bfloat16, mx.float16):
            # numpy has no bfloat16, and the protocol promises float32 for both.
            x = x.astype(mx.float32)
        return np.array(x)

    def astype(self, x, dtype):
        return x.astype(_DTYPES[dtype])

    def dtype_name(self, x):
        return _NAMES[x.dtype]

    def zeros(self, shape, dtype):
        return mx.zeros(shape, dtype=_DTYPES[dtype])

    def arange(self, start, stop):
        return mx.arange(start, stop, dtype=mx.int32)

    def eval(self, *xs):
        mx.eval(*xs)

    def async_eval(self, *xs):
        mx.async_eval(*xs)

    def synchronize(self):
        mx.synchronize()

    def item(self, x):
        return x.item()

    def tolist(self, x):
        return x.tolist()

    # ---- weights -----------------------------------------------------------
    def load_safetensors(self, path, dtype):
        # mx.load is lazy: a tensor is read from the file when first evaluated,
        # and the cast below joins that same lazy graph.
        tensors = mx.load(path)
        if dtype is None:
            return tensors
        target = _DTYPES[dtype]
        return {
            key: t.astype(target) if mx.issubdtype(t.dtype, mx.floating) and t.dtype != target else t
            for key, t in tensors.items()
        }

    # ---- shape -------------------------------------------------------------
    def transpose(self, x, axes):
        return mx.transpose(x, axes)

    def concat(self, xs: Iterable[Tensor], axis):
        return mx.concatenate(list(xs), axis=axis)

    def split(self, x, sizes, axis):
        # mx.split cuts at indices, not sizes.
        cuts = np.cumsum(sizes)[:-1].tolist()
        return mx.split(x, cuts, axis=axis)

    # ---- layers ------------------------------------------------------------
    def prepare_linear(self, weight):
        if self.device == "cpu" and weight.dtype == mx.float32 and weight.ndim == 2:
            # MLX's CPU matmul streams an (in, out) weight ~2.4x faster than the
            # transposed view of an (out, in) one (measured on a 576x1536 f32 weight);
            # Metal kernels prefer the checkpoint layout, so only the CPU re-lays it.
            transposed = mx.contiguous(weight.T)
            mx.eval(transposed)  # materialise now: the checkpoint's copy can then be freed
            return _InputMajorWeight(transposed)
        return weight

    def prepare_quantized_linear(self, weight):
        return mlx_quant.prepare(weight, _DTYPES[self.compute_dtype])

    def prepare_quantized_embedding(self, weight):
        return mlx_quant.prepare(weight, _DTYPES[self.compute_dtype])

    def quantized_layout(self, weight):
        return mlx_quant.layout(weight)

    def linear(self, x, weight, bias=None):
        if self._split_outputs(x, weight):
            return self._across_output_streams(x, weight, bias)
        return self._across_streams(lambda rows: _linear(rows, weight, bias), x)

    def _streams(self) -> list:
        """This thread's CPU streams, made on first use: an MLX stream belongs to the thread that
        made it (another thread gets "There is no Stream(cpu, N) in current thread")."""
        if self.stream_count < 2:
            return []
        streams = getattr(self._thread_streams, "streams", None)
        if streams is None or len(streams) != self.stream_count:
            streams = self._thread_streams.streams = [mx.new_stream(mx.cpu) for _ in range(self.stream_count)]
        return streams

    def _split_outputs(self, x, weight) -> bool:
        """Whether a product has too few rows to split but enough output features, held in
        slices that cost no copy (checkpoint-layout or quantized weights)."""
        if self.stream_count < 2 or (x.shape[-2] if x.ndim >= 2 else 1) >= 2 * MIN_ROWS_PER_STREAM:
            return False
        if isinstance(weight, mlx_quant.QuantizedWeight):
            return weight.out_features() >= MIN_OUTPUTS_PER_STREAM * 2
        return isinstance(weight, mx.array) and weight.ndim == 2 and weight.shape[0] >= MIN_OUTPUTS_PER_STREAM * 2

    def _across_output_streams(self, x, weight, bias):
        """A product with few rows (decode) split by output features across the CPU streams: the
        benchmark model's 30 one-row bf16 products of 576 -> 3072 took 25-28 ms on two streams
        against 46-48 ms on one."""
        total = weight.out_features() if isinstance(weight, mlx_quant.QuantizedWeight) else weight.shape[0]
        streams = self._streams()
        parts = min(len(streams), total // MIN_OUTPUTS_PER_STREAM)
        bounds = [total * i // parts for i in range(parts + 1)]
        outputs = []
        for stream, lo, hi in zip(streams[:parts], bounds[:-1], bounds[1:], strict=True):
            part = weight.output_rows(lo, hi) if isinstance(weight, mlx_quant.QuantizedWeight) else weight[lo:hi]
            with mx.stream(stream):
                outputs.append(_linear(x, part, None if bias is None else bias[lo:hi]))
        return mx.concatenate(outputs, axis=-1)

    def _across_streams(self, fn, x, *aligned):
        """fn(x, *aligned) with the rows (axis -2) of x and of each `aligned` array split across
        the CPU streams, when there are enough rows. A 512-row bf16 product of the benchmark
        model took 121 ms on two streams against 235 ms on one, with the same bits: every output
        row is computed as it would be unsplit."""
        rows = x.shape[-2] if x.ndim >= 2 else 1
        parts = min(self.stream_count, rows // MIN_ROWS_PER_STREAM)
        if parts < 2:
            return fn(x, *aligned)
        streams = self._streams()
        bounds = [rows * i // parts for i in range(parts + 1)]
        outputs = []
        for stream, lo, hi in zip(streams[:parts], bounds[:-1], bounds[1:], strict=True):
            with mx.stream(stream):
                outputs.append(fn(x[..., lo:hi, :], *(a if a is None else a[..., lo:hi, :] for a in aligned)))
        return mx.concatenate(outputs, axis=-2)

    def embedding(self, ids, table):
        if isinstance(table, mlx_quant.QuantizedWeight):
            return table.rows(ids)
        return table[ids]

    def rms_norm(self, x, weight, eps):
        # mx.fast.rms_norm reduces in float32; a weight of another dtype would
        # promote the result away from x's dtype.
        if weight.dtype != x.dtype:
            weight = weight.astype(x.dtype)
        return mx.fast.rms_norm(x, weight, eps)

    def rope(self, x, offset, inv_freq, scale=1.0):
        rot = 2 * inv_freq.shape[0]
        # mx.fast.rope's `scale` scales positions, not cos/sin. Rotation is linear
        # in x, so scaling the rotated features of x scales their cos and sin; the
        # features past `rot` pass through unscaled.
        if scale != 1.0 and rot == x.shape[-1]:
            x = x * scale
        elif scale != 1.0:
            x = mx.concatenate([x[..., :rot] * scale, x[..., rot:]], axis=-1)
        return mx.fast.rope(
            x,
            rot,
            traditional=False,  # rotate-half, the HF layout
            base=None,
            scale=1.0,
            offset=offset,
            freqs=self._periods(inv_freq),
        )

    def _periods(self, inv_freq):
        """mx.fast.rope's `freqs` are periods: angle = position / freqs."""
        cached = self._rope_periods.get(id(inv_freq))
        if cached is not None and cached[0] is inv_freq:
            return cached[1]
        if len(self._rope_periods) >= 16:  # a model that rebuilds inv_freq per call
            self._rope_periods.clear()
        periods = 1.0 / inv_freq.astype(mx.float32)
        self._rope_periods[id(inv_freq)] = (inv_freq, periods)
        return periods

    def attention(self, q, k, v, scale, mask):
        length, total = q.shape[-2], k.shape[-2]
        if isinstance(mask, str) and length == 1:
            mask = None  # one query at the end of the keys sees all of them
        if self.device != "cpu":
            # The fused kernel: GQA without tiling K/V, and "causal" is bottom-right
            # aligned, which is our convention.
            return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        if isinstance(mask, str):
            mask = self.causal_mask(length, total, None)
        # Each query row attends on its own, so a prompt's rows split across the CPU streams.
        return self._across_streams(lambda rows, mask: _grouped_attention(rows, k, v, scale, mask), q, mask)

    def causal_mask(self, length, total, window):
        rows = mx.arange(total - length, total)[:, None]
        cols = mx.arange(total)[None, :]
        mask = cols <= rows
        if window is not None:
            mask = mask & (cols > rows - window)
        return mask

    # mlx.nn's activations are mx.compile'd (shapeless), one fused kernel on Metal.
    def silu(self, x):
        return nn.silu(x)

    def gelu_tanh(self, x):
        return nn.gelu_approx(x)

    def gelu(self, x):
        return nn.gelu(x)

    def tanh(self, x):
        return mx.tanh(x)

    # ---- sampling ----------------------------------------------------------
    def log_softmax(self, x, axis=-1):
        return x - mx.logsumexp(x, axis=axis, keepdims=True)

    def softmax(self, x, axis=-1):
        # precise: accumulate in float32 for low-precision inputs, as torch does.
        return mx.softmax(x, axis=axis, precise=True)

    # MLX returns uint32 indices; int32 keeps index arithmetic signed, like torch's int64.
    def argmax(self, x, axis=-1):
        return mx.argmax(x, axis=axis).astype(mx.int32)

    def topk(self, x, k):
        # mx.topk returns values only, in no particular order: partition to find
        # the k largest, then sort just those k.
        top = mx.argpartition(-x, kth=k - 1, axis=-1)[..., :k]
        values = mx.take_along_axis(x, top, axis=-1)
        order = mx.argsort(-values, axis=-1)
        indices = mx.take_along_axis(top, order, axis=-1)
        return mx.take_along_axis(values, order, axis=-1), indices.astype(mx.int32)

    def sort_descending(self, x):
        indices = mx.argsort(-x, axis=-1)
        return mx.take_along_axis(x, indices, axis=-1), indices.astype(mx.int32)

    def cumsum(self, x, axis=-1):
        return mx.cumsum(x, axis=axis)

    def where(self, cond, a, b):
        return mx.where(cond, a, b)

    def take(self, x, indices, axis=-1):
        if indices.ndim == x.ndim:
            return mx.take_along_axis(x, indices, axis=axis)
        return mx.take(x, indices, axis=axis)

    def scatter(self, x, indices, values, axis=-1):
        # put_along_axis is functional (x is untouched); it wants indices with
        # x's rank, so broadcast the 1-D indices along every other axis.
        axis = axis % x.ndim
        shape = [1] * x.ndim
        shape[axis] = indices.shape[0]
        index = mx.broadcast_to(indices.reshape(shape), values.shape)
        return mx.put_along_axis(x, index, values.astype(x.dtype), axis=axis)

    def make_rng(self, seed):
        return MlxRng(secrets.randbits(63) if seed is None else int(seed))

    def gumbel(self, shape, rng: Any):
        return mx.random.gumbel(shape=shape, dtype=mx.float32, key=rng.next_key())

    # ---- speed -------------------------------------------------------------
    # compile: the Ops default (nothing compiled). A decode step mutates the KV cache and
    # passes the position as a Python int, so mx.compile would either miss those
    # side effects or retrace on every token.

    def set_threads(self, n):
        # MLX exposes no thread control; on the CPU the products use one stream per core (__init__).
        pass

    def memory_bytes(self):
        get_active = getattr(mx, "get_active_memory", None) or mx.metal.get_active_memory
        return int(get_active())


def _linear(x, weight, bias):
    if isinstance(weight, mlx_quant.QuantizedWeight):
        return weight(x, bias)
    w = weight.transposed if isinstance(weight, _InputMajorWeight) else weight.T
    return x @ w if bias is None else mx.addmm(bias, x, w)


def _grouped_attention(q, k, v, scale, mask):
    """Attention for MLX's CPU backend, with the query heads of each KV head folded into rows.

    The same arithmetic as mx.fast.scaled_dot_product_attention's CPU fallback
    (bit-identical outputs), but the fallback broadcasts K/V over the group
    axis, which on CPU costs a copy of the cache per call: folding instead makes
    one matmul per KV head. Measured 1.4x faster for bf16 decode.
    """
    batch, heads, length, dim = q.shape
    kv_heads, total = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scores = (q * scale).reshape(batch, kv_heads, group * length, dim) @ k.swapaxes(-1, -2)
    if mask is not None:
        # (L, S) or (B, 1, L, S) masks broadcast over (B, Hkv, group, L, S).
        grouped = scores.reshape(batch, kv_heads, group, length, total)
        mask = mask if mask.ndim == 2 else mask[:, :, None]
        # The dtype's lowest value, not -inf: a fully masked row then stays finite.
        grouped = mx.where(mask, grouped, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
        scores = grouped.reshape(batch, kv_heads, group * length, total)
    probs = mx.softmax(scores, axis=-1, precise=True)
    return (probs @ v).reshape(batch, heads, length, dim)


class _InputMajorWeight:
    """A linear weight stored (in_features, out_features), as the CPU matmul prefers."""

    __slots__ = ("transposed",)

    def __init__(self, transposed):
        self.transposed = transposed
