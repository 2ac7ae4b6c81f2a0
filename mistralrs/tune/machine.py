"""The memory a model would run in here: a CUDA GPU's, Apple Silicon's unified memory, or RAM.

`detect_machine` is the one place that asks the hardware; tests replace it with a fake machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Of a CUDA GPU's memory, what the model may use: the rest is the CUDA context and the
# activations' workspace (mistral.rs sizes PagedAttention from 90% of free memory too).
CUDA_USABLE = 0.9
# Of system RAM, what a model on the CPU (or CUDA's offloaded layers) may use: the OS and
# other programs keep the rest.
RAM_USABLE = 0.8
# macOS lets the GPU wire about three quarters of unified memory when MLX does not say.
METAL_USABLE = 0.75


@dataclass(frozen=True)
class Machine:
    kind: str  # "cuda", "metal" or "cpu"
    name: str
    memory_bytes: int  # the memory the model runs in: VRAM, unified memory, or RAM
    budget_bytes: int  # the part of it a model may fill
    offload_bytes: int = 0  # RAM a CUDA model can spill layers into ("Hybrid"); 0 elsewhere

    @property
    def memory_name(self) -> str:
        return {"cuda": "VRAM", "metal": "unified memory"}.get(self.kind, "RAM")


def system_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 0


def detect_machine(backend: str) -> Machine:
    """The device `backend` (torch or mlx) would run a model on, and its memory."""
    ram = system_memory_bytes()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return Machine("cuda", props.name, props.total_memory, int(props.total_memory * CUDA_USABLE),
                           offload_bytes=int(ram * RAM_USABLE))
    else:
        from mistralrs.backends import on_apple_silicon

        if on_apple_silicon():
            import mlx.core as mx

            info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
            total = int(info.get("memory_size", ram))
            budget = int(info.get("max_recommended_working_set_size", total * METAL_USABLE))
            name = info.get("device_name") or f"Apple Silicon {info.get('architecture', '')}".strip()
            return Machine("metal", str(name), total, budget)
    return Machine("cpu", _cpu_name(), ram, int(ram * RAM_USABLE))


def _cpu_name() -> str:
    import platform

    return f"{os.cpu_count() or 1} cores, {platform.machine() or 'unknown'}"
