"""Compile the CUDA path's Triton kernels for NVIDIA GPUs, with no GPU: Triton's compiler
and its bundled ptxas need none. Used by test_cuda_quant.py, in a process of its own with
TRITON_INTERPRET=0.

    python tests/triton_compile.py '[[group, packed, activation, arch], ...]'

prints [[case, {kernel name: {"registers": per thread, "stack": bytes}}], ...] as JSON, read
from the compiled cubin with the cuobjdump that Triton bundles; a kernel that does not
compile raises.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mistralrs.backends import triton_affine

WEIGHTS = {"values_ptr": "*u8", "scales_ptr": "*fp16", "biases_ptr": "*fp16"}
SIZES = {"N": "i32", "K": "i32", "n_groups": "i32"}


def compile_kernel(kernel, signature: dict, constants: dict, arch: int):
    source = ASTSource(kernel, {**signature, **dict.fromkeys(constants, "constexpr")}, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32))


def resource_usage(compiled) -> dict:
    """Registers per thread and stack bytes (spills) of the kernel's cubin."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as folder:
        cubin = os.path.join(folder, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        done = subprocess.run([cuobjdump, "-res-usage", cubin], capture_output=True, text=True, check=True)
    usage = re.search(r"REG:(\d+) STACK:(\d+)", done.stdout)
    return {"registers": int(usage.group(1)), "stack": int(usage.group(2))}


def reports(group: int, packed: bool, activation: str, arch: int) -> dict:
    """Both kernels, typed and specialised as the wrappers call them."""
    matvec = compile_kernel(triton_affine._affine_matvec,
                            {"x_ptr": f"*{activation}", **WEIGHTS, "out_ptr": f"*{activation}", **SIZES,
                             "stride_x": "i32", "stride_out": "i32"},
                            triton_affine.matvec_constants(group, packed), arch)
    dequantize = compile_kernel(triton_affine._affine_dequantize, {**WEIGHTS, "out_ptr": f"*{activation}", **SIZES},
                                triton_affine.dequantize_constants(group, packed), arch)
    return {"_affine_matvec": resource_usage(matvec), "_affine_dequantize": resource_usage(dequantize)}


if __name__ == "__main__":
    print(json.dumps([[case, reports(*case)] for case in json.loads(sys.argv[1])]))
