"""Our own decode kernels for x86-64 CPUs: matrix-vector products (csrc/cpu_matvec.cpp) and attention.

A decode step reads every weight once, so it runs at the speed its products
stream memory. On a 2-core AMD EPYC (Zen 3, AVX2, no native bfloat16) VM whose
memory gives 22 GB/s to two threads, torch's kernels stream far less; measured
over the 210 body matrices of the 134.5 M benchmark model, cold from memory:

    bfloat16  F.linear 24 ms (8.8 GB/s)           these kernels 12-13 ms (16-18 GB/s)
    float32   F.linear 39 ms (10.9 GB/s)          these kernels 22 ms (19 GB/s)

and on one 1536x576 weight, 2 threads: `_weight_int4pack_mm_for_cpu` 83 us and
Q8_0 as two int4 products 168 us, where these take 45-50 us (4-bit) and 40-50 us
(8-bit), exact values. In a whole decode step on the benchmark model (compiled,
same VM, noisy) that moved bf16 from 28 to 36-39 tok/s and Q8_0 from 25 to 40-47;
float32 stays at ~21 either way, bound by its 650 MB per token.

On a 2-core Intel Xeon VM with AVX-512, native bfloat16 and AMX (Sapphire Rapids
class, 25 GB/s to two threads) they beat oneDNN's packed kernels too: a compiled
decode step of the benchmark model took 21.6 against 26.0 ms in bfloat16 and 16.6
against 19.8 ms in Q8_0, and Q8_0 prefill rose from 1,030 to 2,240 tok/s.

So they run on every x86-64 CPU with AVX2. They are built once per machine with
the C++ compiler torch.compile already needs (~15 s), cached on disk, and loaded
as torch operators, so compiled layers call them directly. Without a compiler, on other CPUs, or with
MISTRALRS_CPU_KERNELS=0, torch's own kernels run instead.

The same library holds decode attention (csrc/cpu_decode_attention.cpp): one query
row per head against the float32 KV cache, about half of SDPA's time at a few
hundred cached positions (24-30 us against 47-57 us at 301 positions, 9 query and
3 KV heads, 2 threads); and, on CPUs with AMX, prompt-chunk products of 8-bit
weights with float32-grade results (csrc/cpu_amx_prompt.cpp).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from mistralrs.errors import UserError

ENV = "MISTRALRS_CPU_KERNELS"
SOURCES = [Path(__file__).parent / "csrc" / name
           for name in ("cpu_matvec.cpp", "cpu_decode_attention.cpp", "cpu_amx_prompt.cpp")]
ROWS = 4  # output rows repacked into one stream (kRows in the source)
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-w"]


def cache_dir() -> Path:
    """$MISTRALRS_KERNEL_CACHE, else ~/.cache/mistralrs/cpu-kernels (or under $XDG_CACHE_HOME)."""
    if os.environ.get("MISTRALRS_KERNEL_CACHE"):
        return Path(os.environ["MISTRALRS_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mistralrs" / "cpu-kernels"


def unavailable_reason() -> str | None:
    """Why the kernels do not run here, or None when they do (before building them)."""
    setting = os.environ.get(ENV, "").strip().lower()
    if setting in ("0", "false", "off", "no"):
        return f"{ENV}={setting}"
    if setting not in ("", "1", "true", "on", "yes"):
        raise UserError(f"{ENV}={setting!r} is not understood: set it to 1 (our CPU decode kernels) "
                        "or 0 (torch's), or leave it unset.")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"they are written for x86-64, this is {platform.machine()}"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return "this CPU has no AVX2"
    if _compiler() is None:
        return "no C++ compiler found (install g++ or set CXX)"
    return None


def _compiler() -> str | None:
    return os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)


@functools.cache
def available() -> bool:
    """Build (once per machine) and load the kernels; False, with one note, when they cannot be."""
    reason = unavailable_reason()
    if reason is None:
        try:
            torch.ops.load_library(str(_build()))
            _register_shapes()
            return True
        except (OSError, RuntimeError) as error:
            lines = str(error).strip().splitlines()
            print(f"mistralrs: building the CPU decode kernels failed ({lines[-1] if lines else type(error).__name__}); "
                  "torch's kernels run decode instead.", file=sys.stderr)
            return False
    if os.environ.get(ENV):
        print(f"mistralrs: torch's CPU kernels run decode ({reason}).", file=sys.stderr)
    return False


def _build() -> Path:
    """The shared library for this source, torch and compiler, built into the cache if missing."""
    from torch.utils import cpp_extension

    compiler = _compiler()
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    libs = [f"-L{p}" for p in cpp_extension.library_paths()] + ["-lc10", "-ltorch_cpu"]
    key = hashlib.sha256("\0".join([*(s.read_text() for s in SOURCES), torch.__version__, compiler, *FLAGS, abi]).encode())
    target = cache_dir() / f"cpu_kernels-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    print("mistralrs: building the CPU decode kernels for this machine (once, ~15 s)", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        command = [compiler, *FLAGS, abi, *includes, *map(str, SOURCES), "-o", str(built), *libs]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
        os.replace(built, target)  # atomic: a concurrent build leaves one complete file
    return target


def _register_shapes() -> None:
    """Output shapes for torch.compile, which traces the operators without running them."""
    def dense(x, w):
        return x.new_empty((x.shape[0], w.shape[0]))

    def quantized(x, q, scale_bias, group, in_features):
        return x.new_empty((x.shape[0], q.shape[0]))

    def attention(q, k, v, scale):
        return q.new_empty((*q.shape[:3], v.shape[-1]))

    def prompt_product(x, q, scale_bias, group, in_features):
        return x.new_empty((x.shape[0], q.shape[0]))

    for name, fn in (("matvec_dense", dense), ("matvec_q4", quantized), ("matvec_q8", quantized),
                     ("decode_attention", attention), ("prompt_product_q8", prompt_product)):
        torch.library.register_fake(f"mistralrs_cpu::{name}", fn)


# ---- repacking (load time) ---------------------------------------------------

def dense_fits(weight: torch.Tensor) -> bool:
    n, k = weight.shape
    return n % ROWS == 0 and k % 8 == 0 and weight.dtype in (torch.float32, torch.bfloat16)


def repack_dense(weight: torch.Tensor) -> torch.Tensor:
    """(N, K) -> the kernel's layout (N/4, K/8, 4, 8), stored as (N, K)."""
    n, k = weight.shape
    return weight.reshape(n // ROWS, ROWS, k // 8, 8).transpose(1, 2).contiguous().reshape(n, k)


def unpack_dense(packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight in its usual (N, K) layout and `dtype`, in one pass (for prompt chunks)."""
    n, k = packed.shape
    out = torch.empty((n // ROWS, ROWS, k // 8, 8), dtype=dtype)
    out.copy_(packed.reshape(n // ROWS, k // 8, ROWS, 8).transpose(1, 2))
    return out.reshape(n, k)


def quantized_fits(rows: int, cols: int, group_size: int, bits: int) -> bool:
    """Whether the kernels take this shape: 4-bit values are read 64 columns at a time."""
    step = 64 if bits <= 4 else 32
    return (rows % ROWS == 0 and cols % step == 0 and cols % group_size == 0
            and (group_size == 32 or group_size % step == 0))


def repack_quantized(q: np.ndarray, scales: np.ndarray, biases: np.ndarray, group_size: int, bits: int):
    """Unsigned values (N, K) of at most `bits` bits with float scales and biases per group ->
    (values, scale_bias) in the kernel's layout: 4-bit chunks for bits <= 4, bytes above.

    Scales and biases become float16 (11 significant bits, against bfloat16's 8 in torch's
    int4 kernel); None when that would move some weight by more than 1e-3 of the largest
    (a scale beyond float16's range, or tiny scales next to large ones)."""
    n, k = q.shape
    pairs = np.stack([scales, biases], axis=1).astype(np.float32)  # (N, 2, G)
    with np.errstate(over="ignore"):
        half = pairs.astype(np.float16)
    if not np.all(np.isfinite(half)):
        return None
    top = float((1 << bits) - 1)
    moved = np.abs(half - pairs) * np.array([top, 1.0], dtype=np.float32)[None, :, None]
    largest = np.abs(pairs) * np.array([top, 1.0], dtype=np.float32)[None, :, None]
    if moved.sum(axis=1).max() > 1e-3 * largest.sum(axis=1).max():
        return None
    if bits <= 4:  # (N/4, K/64, 4, 2 chunks, 16): byte j of a chunk holds column j low, j + 16 high
        chunks = q.reshape(n // ROWS, ROWS, k // 64, 2, 32).transpose(0, 2, 1, 3, 4)
        chunks = chunks[..., :16] | (chunks[..., 16:] << 4)
    else:  # (N/4, K/32, 4, 32)
        chunks = q.reshape(n // ROWS, ROWS, k // 32, 32).transpose(0, 2, 1, 3)
    values = np.ascontiguousarray(chunks, dtype=np.uint8).reshape(n, -1)
    groups = k // group_size
    scale_bias = half.reshape(n // ROWS, ROWS, 2, groups).transpose(0, 3, 2, 1)  # (N/4, G, 2, 4)
    return torch.from_numpy(values), torch.from_numpy(np.ascontiguousarray(scale_bias).reshape(n // ROWS, groups, 8))


def matvec_dense(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return torch.ops.mistralrs_cpu.matvec_dense(x, packed)


def matvec_quantized(x: torch.Tensor, values: torch.Tensor, scale_bias: torch.Tensor, group_size: int,
                     in_features: int, bits: int) -> torch.Tensor:
    op = torch.ops.mistralrs_cpu.matvec_q4 if bits <= 4 else torch.ops.mistralrs_cpu.matvec_q8
    return op(x, values, scale_bias, group_size, in_features)


def use_avx512(enabled: bool) -> bool:
    """Switch the AVX-512 VNNI path of 8-bit decode products on or off (it is on wherever the CPU
    has it); returns whether it is on now. Tests use it to check the AVX2 path on such CPUs too."""
    return available() and bool(torch.ops.mistralrs_cpu.use_avx512(enabled))


def amx_ready() -> bool:
    """Whether `prompt_product_q8` runs here: the kernels are built and the CPU has AMX-BF16."""
    return available() and bool(torch.ops.mistralrs_cpu.amx_ready())


def prompt_product_fits(out_features: int, in_features: int, group_size: int) -> bool:
    return out_features % 32 == 0 and in_features % 32 == 0 and in_features % group_size == 0 and group_size % 32 == 0


def prompt_product_q8(x: torch.Tensor, values: torch.Tensor, scale_bias: torch.Tensor, group_size: int,
                      in_features: int) -> torch.Tensor:
    """float32 rows times an 8-bit weight in the kernels' layout, on AMX with float32 results
    (csrc/cpu_amx_prompt.cpp): for prompt chunks, where bfloat16 results lose the weights' precision."""
    return torch.ops.mistralrs_cpu.prompt_product_q8(x, values, scale_bias, group_size, in_features)


def decode_attention_fits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `decode_attention` takes these: one float32 query row per head, head sizes in 8s."""
    return (q.shape[-2] == 1 and q.dtype == k.dtype == v.dtype == torch.float32 and q.shape[-1] % 8 == 0
            and v.shape[-1] % 8 == 0 and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for one query row per head (csrc/cpu_decode_attention.cpp)."""
    return torch.ops.mistralrs_cpu.decode_attention(q, k, v, scale)


def unpack_quantized(values: torch.Tensor, scale_bias: torch.Tensor, group_size: int, in_features: int, bits: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """The dequantized (N, K) weight in `dtype` from the kernels' layout (for prompt chunks)."""
    n, k = values.shape[0], in_features
    if bits <= 4:
        v = values.reshape(n // ROWS, k // 64, ROWS, 2, 16)
        q = torch.cat([v & 15, v >> 4], dim=-1).permute(0, 2, 1, 3, 4)
    else:
        q = values.reshape(n // ROWS, k // 32, ROWS, 32).permute(0, 2, 1, 3)
    groups = k // group_size
    # In float32, rounded once: in bfloat16, scale * q and the bias (near -scale * 2^(bits-1) for
    # symmetric formats) nearly cancel, and their separate roundings moved some 8-bit weights by
    # more than one quantization step. Compiled prompt layers fuse this into one loop.
    pairs = scale_bias.reshape(n // ROWS, groups, 2, ROWS).permute(2, 0, 3, 1).reshape(2, n, groups, 1).float()
    w = q.reshape(n, groups, group_size).float() * pairs[0] + pairs[1]
    return w.reshape(n, k).to(dtype)
