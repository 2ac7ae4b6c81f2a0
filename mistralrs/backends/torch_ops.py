"""The torch backend: CUDA when present (unless --cpu), else the CPU."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open

from mistralrs.backends import (
    torch_compile,
    torch_cpu_kernels,
    torch_cpu_linear,
    torch_cuda_quant,
    torch_fixed_shapes,
    torch_quant,
)
from mistralrs.backends.ops import Ops, Tensor, default_cpu_threads

_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class TorchOps(Ops):
    name = "torch"

    def __init__(self, cpu: bool = False):
        use_cuda = torch.cuda.is_available() and not cpu
        self.torch_device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        self.device = str(self.torch_device)
        self._rope_key = None
        self._rope_value = None
        self._rope_offset = None
        # Inference only: autograd bookkeeping costs per-op time on the decode path.
        torch.set_grad_enabled(False)
        # Decided here, not on first use, so compiled code never traces the kernels' build.
        self._decode_attention_kernel = self.torch_device.type == "cpu" and torch_cpu_kernels.available()

    # ---- data --------------------------------------------------------------
    def asarray(self, array, dtype=None):
        t = torch.as_tensor(np.asarray(array))
        if dtype is not None:
            t = t.to(_DTYPES[dtype])
        return t.to(self.torch_device)

    def to_numpy(self, x):
        x = x.detach()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.cpu().numpy()

    def astype(self, x, dtype):
        return x.to(_DTYPES[dtype])

    def dtype_name(self, x):
        return _NAMES[x.dtype]

    def zeros(self, shape, dtype):
        return torch.zeros(shape, dtype=_DTYPES[dtype], device=self.torch_device)

    def arange(self, start, stop):
        return torch.arange(start, stop, device=self.torch_device)

    def synchronize(self):
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize()

    def item(self, x):
        return x.item()

    def tolist(self, x):
        return x.tolist()

    # ---- weights -----------------------------------------------------------
    def load_safetensors(self, path, dtype):
        out = {}
        target = _DTYPES[dtype] if dtype else None
        # safe_open memory-maps the file; tensors are materialised one at a time.
        with safe_open(path, framework="pt", device="cpu") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if target is not None and t.is_floating_point() and t.dtype != target:
                    t = t.to(target)
                out[key] = t.to(self.torch_device)
        return out

    def prepare_linear(self, weight):
        if self.torch_device.type == "cpu":
            return torch_cpu_linear.prepare(weight, compiled=self.compile_steps)
        return weight

    def prepare_quantized_linear(self, weight):
        if self.torch_device.type == "cpu":
            return torch_quant.prepare_cpu(weight)
        if self.torch_device.type == "cuda" and torch_cuda_quant.triton_unavailable_reason() is None:
            packed = torch_cuda_quant.CudaQuantWeight.from_quantized(weight, self.torch_device)
            if packed is not None:
                return packed
        dense = torch_quant.prepare_dense(weight, _DTYPES[self.compute_dtype], self.torch_device)
        return self.prepare_linear(dense)

    def prepare_quantized_embedding(self, weight):
        if self.torch_device.type == "cpu":
            return torch_quant.Int8Weight(weight)  # rows of int8 are cheap to gather
        return torch_quant.prepare_dense(weight, _DTYPES[self.compute_dtype], self.torch_device)

    def quantized_layout(self, weight):
        if self.torch_device.type == "cuda":
            reason = torch_cuda_quant.triton_unavailable_reason()
            if reason is None and torch_cuda_quant.fits(weight):
                return None  # packed, through the Triton kernels
            why = reason or "no Triton kernel takes its group size and width"
            return f"dequantized to the compute dtype on {self.device}: {why}"
        if self.torch_device.type != "cpu":
            return f"dequantized to the compute dtype on {self.device} (no quantized kernel there)"
        if torch_quant.cpu_layout(weight) == "int8":
            return "requantized to int8 with one scale per row (torch's int8 CPU kernel)"
        return None

    # ---- shape -------------------------------------------------------------
    def transpose(self, x, axes):
        return x.permute(*axes)

    def concat(self, xs: Iterable[Tensor], axis):
        return torch.cat(list(xs), dim=axis)

    def split(self, x, sizes, axis):
        return list(torch.split(x, sizes, dim=axis))

    # ---- layers ------------------------------------------------------------
    def linear(self, x, weight, bias=None):
        if isinstance(weight, _CALLABLE_WEIGHTS):
            return weight(x, bias)
        return F.linear(x, weight, bias)

    def embedding(self, ids, table):
        if isinstance(table, torch_quant.Int8Weight):
            return table.rows(ids).to(_DTYPES[self.compute_dtype])
        return F.embedding(ids, table)

    def rms_norm(self, x, weight, eps):
        # The fused kernel accumulates in float32 whatever the input dtype.
        return F.rms_norm(x, (x.shape[-1],), weight, eps)

    def rope(self, x, offset, inv_freq, scale=1.0):
        cos, sin = self._rope_table(offset, x.shape[-2], inv_freq, scale, x.dtype)
        rot = cos.shape[-1]
        xr, rest = (x, None) if rot == x.shape[-1] else (x[..., :rot], x[..., rot:])
        # rotate_half(x) = (-x2, x1): the halves swapped by a flip, the sign is in the sin table.
        # Written without cat, the compiled layer fuses it into one loop with no extra buffers.
        swapped = xr.unflatten(-1, (2, rot // 2)).flip(-2).flatten(-2)
        out = xr * cos + swapped * sin
        return out if rest is None else torch.cat((out, rest), dim=-1)

    def _rope_table(self, offset, length, inv_freq, scale, dtype):
        """cos/sin for positions offset..offset+length-1, reused across the layers of one step.

        Every layer of a forward pass rotates q and k at the same positions, so the
        table is computed once per step instead of twice per layer.
        """
        per_row = isinstance(offset, torch.Tensor)
        if torch.compiler.is_compiling():
            # Inside a compiled layer the table is a few fused instructions; caching it on
            # this object would make every step's key a guard that fails.
            return _rope_table(offset, length, inv_freq, scale, dtype, per_row)
        # A per-row offset tensor is keyed by identity (a batch's layers share one), and held
        # while cached so its id cannot be reused by another tensor.
        key = (id(inv_freq), "rows", id(offset), length, scale, dtype) if per_row else \
            (id(inv_freq), offset, length, scale, dtype)
        if self._rope_key != key:
            self._rope_offset = offset
            self._rope_key, self._rope_value = key, _rope_table(offset, length, inv_freq, scale, dtype, per_row)
        return self._rope_value

    def kv_cache_dtype(self, compute_dtype):
        # On CPU, attention over a bf16/f16 cache is several times slower than in
        # float32 (measured with SDPA at decode), so the cache is kept in float32. Prompts are
        # the other way round (bf16 SDPA 1.0 ms against 3.2 in float32 for 512 tokens on the
        # Xeon VM), and a fresh prompt attends to its keys as computed (KVCache).
        return "float32" if self.torch_device.type == "cpu" else compute_dtype

    def attention(self, q, k, v, scale, mask):
        if q.dtype != k.dtype:
            return self.attention(q.to(k.dtype), k, v, scale, mask).to(q.dtype)
        if mask is None and self._decode_attention_kernel and torch_cpu_kernels.decode_attention_fits(q, k, v):
            # One query row per head (decode): about half of SDPA's time on the CPU.
            return torch_cpu_kernels.decode_attention(q, k, v, scale)
        gqa = q.shape[1] != k.shape[1]
        if isinstance(mask, str):
            # SDPA's is_causal aligns the mask top-left, so it is right only when
            # queries and keys are the same span.
            if q.shape[-2] == k.shape[-2]:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
            mask = self.causal_mask(q.shape[-2], k.shape[-2], None)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)

    def causal_mask(self, length, total, window):
        rows = torch.arange(total - length, total, device=self.torch_device)[:, None]
        cols = torch.arange(total, device=self.torch_device)[None, :]
        mask = cols <= rows
        if window is not None:
            mask &= cols > rows - window
        return mask

    def silu(self, x):
        return F.silu(x)

    def gelu_tanh(self, x):
        return F.gelu(x, approximate="tanh")

    def gelu(self, x):
        return F.gelu(x)

    def tanh(self, x):
        return torch.tanh(x)

    # ---- sampling ----------------------------------------------------------
    def log_softmax(self, x, axis=-1):
        return torch.log_softmax(x, dim=axis)

    def softmax(self, x, axis=-1):
        return torch.softmax(x, dim=axis)

    def argmax(self, x, axis=-1):
        return torch.argmax(x, dim=axis)

    def topk(self, x, k):
        values, indices = torch.topk(x, k, dim=-1)
        return values, indices

    def sort_descending(self, x):
        values, indices = torch.sort(x, dim=-1, descending=True)
        return values, indices

    def cumsum(self, x, axis=-1):
        return torch.cumsum(x, dim=axis)

    def where(self, cond, a, b):
        return torch.where(cond, a, b)

    def take(self, x, indices, axis=-1):
        return torch.take_along_dim(x, indices, dim=axis) if indices.dim() == x.dim() else x.index_select(axis, indices)

    def scatter(self, x, indices, values, axis=-1):
        out = x.clone()
        out.index_copy_(axis, indices, values.to(x.dtype))
        return out

    def make_rng(self, seed):
        gen = torch.Generator(device=self.torch_device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed))
        return gen

    def gumbel(self, shape, rng: Any):
        u = torch.rand(shape, generator=rng, device=self.torch_device, dtype=torch.float32)
        # Clamp away from 0 and 1 so -log(-log(u)) stays finite.
        u = u.clamp_(1e-20, 1.0 - 1e-7)
        return -torch.log(-torch.log(u))

    # ---- speed -------------------------------------------------------------
    def compile(self, fn, fixed_shapes=False, varying_rows=False):
        if not self.compile_steps:
            return None
        step = torch_compile.CompiledStep(fn)
        if varying_rows:
            # Prompt chunks fall into 4 shape families on the benchmark models (see
            # compiling._WARM_PROMPTS), more where sliding windows branch; each is traced once.
            return torch_fixed_shapes.FixedShapeStep(fn, step, varying_dims={0: (1,)}, max_traces=12)
        return torch_fixed_shapes.FixedShapeStep(fn, step) if fixed_shapes else step

    def compile_unavailable(self):
        return torch_compile.unavailable_reason()

    def set_threads(self, n):
        if n is None:
            n = default_cpu_threads()
        torch.set_num_threads(max(1, int(n)))

    def memory_bytes(self):
        if self.torch_device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.torch_device))
        return None


def _rope_table(offset, length, inv_freq, scale, dtype, per_row):
    steps = torch.arange(length, device=inv_freq.device, dtype=torch.float32)
    if per_row:  # (B,) first positions -> (B, 1, L, rot) tables broadcast over the heads
        positions = offset.to(torch.float32)[:, None] + steps[None, :]
        freqs = (positions[..., None] * inv_freq)[:, None]
    else:
        freqs = torch.outer(steps + offset, inv_freq)
    # Both halves of a head share the frequencies; the first half's sin is negated (rope).
    twice = (1,) * (freqs.dim() - 1) + (2,)
    sign = (torch.arange(2 * freqs.shape[-1], device=freqs.device) >= freqs.shape[-1]) * 2.0 - 1.0
    cos = freqs.cos().repeat(twice) * scale
    sin = freqs.sin().repeat(twice) * (sign * scale)
    return cos.to(dtype), sin.to(dtype)


_CALLABLE_WEIGHTS = (
    torch_cpu_linear.PackedCpuWeight,
    torch_cpu_linear.DenseCpuWeight,
    torch_cpu_linear.UpcastingBf16Weight,
    torch_cpu_linear.StreamingCpuWeight,
    torch_quant.StreamingQuantWeight,
    torch_quant.Int4Weight,
    torch_quant.SplitInt4Weight,
    torch_quant.Int8Weight,
    torch_cuda_quant.CudaQuantWeight,
)
