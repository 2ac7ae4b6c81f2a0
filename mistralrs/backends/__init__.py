"""Backend selection. Only this package (and backend kernels in quant/) imports torch or mlx."""

from __future__ import annotations

import importlib.util
import platform

from mistralrs.backends.ops import Ops
from mistralrs.errors import UserError

BACKENDS = ("auto", "torch", "mlx")


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def on_apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def resolve_backend_name(backend: str = "auto") -> str:
    """`auto`: MLX on Apple Silicon when installed, else torch (else MLX if it is all there is)."""
    if backend not in BACKENDS:
        raise UserError(f"Unknown backend `{backend}`: choose one of {', '.join(BACKENDS)}.", param="backend")
    if backend == "auto":
        if on_apple_silicon() and installed("mlx"):
            return "mlx"
        if installed("torch"):
            return "torch"
        if installed("mlx"):
            return "mlx"
        raise UserError(
            "No backend is installed: install one with `pip install 'mistralrs-py[torch]'` "
            "(CUDA or CPU) or `pip install 'mistralrs-py[mlx]'` (Apple Silicon; `mlx[cpu]` on Linux)."
        )
    module = "torch" if backend == "torch" else "mlx"
    if not installed(module):
        raise UserError(
            f"The {backend} backend was requested but `{module}` is not installed: "
            f"`pip install 'mistralrs-py[{backend}]'`, or pick another with --backend.",
            param="backend",
        )
    return backend


def get_ops(backend: str = "auto", cpu: bool = False) -> Ops:
    name = resolve_backend_name(backend)
    if name == "torch":
        from mistralrs.backends.torch_ops import TorchOps

        return TorchOps(cpu=cpu)
    from mistralrs.backends.mlx_ops import MlxOps

    return MlxOps(cpu=cpu)


__all__ = ["Ops", "BACKENDS", "get_ops", "resolve_backend_name", "on_apple_silicon"]
