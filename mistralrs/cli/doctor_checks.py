"""What `mistralrs doctor` checks on the machine itself: CPU, backends, GPU, fused attention.

Every check returns a `Check`; none raises, since one broken probe must not
hide the others. A backend that is not installed is never imported.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass

OK, WARN, ERROR = "ok", "warn", "error"
STATUSES = (OK, WARN, ERROR)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # one of STATUSES
    message: str
    suggestion: str = ""

    def to_json(self) -> dict:
        return asdict(self)


# ---- CPU -----------------------------------------------------------------------------------------

# The x86 flags CPU inference cares about, as /proc/cpuinfo spells them.
X86_FLAGS = ("avx", "avx2", "avx512f", "fma", "avx512_bf16")
AMX_FLAGS = ("amx_tile", "amx_bf16", "amx_int8")


def cpu_extensions() -> Check:
    machine = platform.machine().lower()
    arm = machine in ("arm64", "aarch64") or machine.startswith("armv8")
    flags = _cpu_flags()
    if flags is None:
        return Check("CPU extensions", WARN, f"Could not read the CPU features on {platform.system()} {machine}.",
                     "CPU inference still works; its speed depends on SIMD support the check could not see.")
    if arm:
        # Linux calls NEON `asimd`; macOS reports it through sysctl as `neon`.
        if {"asimd", "neon"} & flags:
            extra = " + bf16" if {"bf16", "feat_bf16"} & flags else ""
            return Check("CPU extensions", OK, f"{machine}: NEON{extra}.")
        return Check("CPU extensions", WARN, f"{machine} without NEON.", "CPU inference will be slow.")
    found = [f for f in X86_FLAGS if f in flags]
    if any(f in flags for f in AMX_FLAGS):
        found.append("amx")
    shown = ", ".join(found) or "none of " + ", ".join(X86_FLAGS)
    if "avx2" not in flags or "fma" not in flags:
        return Check("CPU extensions", WARN, f"{machine}: {shown}.",
                     "Without AVX2/FMA the CPU kernels fall back to slow paths; prefer a GPU or a newer CPU.")
    return Check("CPU extensions", OK, f"{machine}: {shown}.")


def _cpu_flags() -> set[str] | None:
    system = platform.system()
    if system == "Linux":
        return _linux_cpu_flags()
    if system == "Darwin":
        return _macos_cpu_flags()
    return None


def _linux_cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                # x86 lists them under `flags`, ARM under `Features`; every core repeats the line.
                if key.strip() in ("flags", "Features"):
                    return set(value.lower().split())
    except OSError:
        return None
    return None


def _macos_cpu_flags() -> set[str] | None:
    if platform.machine() == "arm64":
        # Apple Silicon: every core has NEON; sysctl says which optional features exist.
        flags = {"neon"}
        if _sysctl("hw.optional.arm.FEAT_BF16") == "1":
            flags.add("feat_bf16")
        return flags
    text = " ".join(filter(None, (_sysctl("machdep.cpu.features"), _sysctl("machdep.cpu.leaf7_features"))))
    if not text:
        return None
    # sysctl spells them AVX1.0, AVX2, AVX512F, FMA; map onto the /proc/cpuinfo names.
    flags = {f.lower().replace("avx1.0", "avx") for f in text.split()}
    return flags | ({"avx512_bf16"} if "avx512bf16" in flags else set())


def _sysctl(name: str) -> str | None:
    try:
        done = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# ---- backends and hardware -----------------------------------------------------------------------


def has_nvidia_gpu() -> bool:
    """An NVIDIA GPU is present (driver loaded), whatever torch was built for."""
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


def is_apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def backends_installed() -> Check:
    found = [name for name, module in (("torch", "torch"), ("MLX", "mlx")) if installed(module)]
    if not found:
        hint = "pip install mlx" if is_apple_silicon() else "pip install torch"
        return Check("Backends", ERROR, "Neither torch nor MLX is installed: nothing can run a model.", hint)
    versions = []
    for name in found:
        versions.append(f"{name} {_version(name)}")
    return Check("Backends", OK, "Installed: " + ", ".join(versions) + ".")


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name.lower())
    except PackageNotFoundError:
        return "(unknown version)"


def torch_matches_hardware() -> Check | None:
    """torch's build against the GPU in the machine; None when torch is not installed."""
    if not installed("torch"):
        return None
    import torch

    nvidia = has_nvidia_gpu()
    if torch.version.cuda is None:
        if nvidia:
            return Check("torch / hardware", WARN, f"torch {torch.__version__} is a CPU-only build, "
                         "but this machine has an NVIDIA GPU.",
                         "Install a CUDA build of torch (see https://pytorch.org/get-started/locally/).")
        return Check("torch / hardware", OK, f"torch {torch.__version__} (CPU build); no NVIDIA GPU found.")
    if torch.cuda.is_available():
        return Check("torch / hardware", OK, f"torch {torch.__version__} with CUDA {torch.version.cuda}: "
                     f"{torch.cuda.device_count()} GPU(s) usable.")
    if nvidia:
        return Check("torch / hardware", WARN, f"torch is built for CUDA {torch.version.cuda}, but CUDA is not "
                     "usable (driver too old, or the GPU is hidden by CUDA_VISIBLE_DEVICES).",
                     "Run `nvidia-smi`; update the driver or install a torch built for your CUDA version.")
    return Check("torch / hardware", OK, f"torch {torch.__version__} is a CUDA build; no NVIDIA GPU found, "
                 "so it runs on the CPU.")


def mlx_matches_hardware() -> Check | None:
    """MLX against Metal; None when MLX is neither installed nor expected (not Apple Silicon)."""
    apple = is_apple_silicon()
    if not installed("mlx"):
        if apple:
            return Check("MLX / hardware", WARN, "Apple Silicon, but MLX is not installed.",
                         "pip install mlx  (the fastest backend on Apple Silicon).")
        return None
    import mlx.core as mx

    metal = mx.metal.is_available()
    if metal:
        return Check("MLX / hardware", OK, "MLX with Metal (GPU).")
    if apple:
        return Check("MLX / hardware", WARN, "MLX is installed but Metal is not available: MLX runs on the CPU.",
                     "Install the macOS MLX wheel (pip install mlx) rather than a CPU-only build.")
    return Check("MLX / hardware", OK, "MLX without Metal (CPU only), as expected off Apple Silicon.")


# ---- GPU and attention ---------------------------------------------------------------------------


def gpu_compute() -> Check | None:
    """CUDA compute capability and which flash-attention generation it allows; None without CUDA."""
    if not _cuda_usable():
        return None
    import torch

    gpus = []
    lowest = (99, 0)
    for index in range(torch.cuda.device_count()):
        capability = torch.cuda.get_device_capability(index)
        lowest = min(lowest, capability)
        gpus.append(f"{index}: {torch.cuda.get_device_name(index)} (sm_{capability[0]}{capability[1]})")
    # Flash attention v2 needs Ampere (sm_80) or newer; v3 is Hopper (sm_90) only.
    if lowest >= (9, 0):
        fa = "flash attention v2 and v3 capable"
    elif lowest >= (8, 0):
        fa = "flash attention v2 capable"
    else:
        return Check("GPU compute capability", WARN, "; ".join(gpus) + ": below sm_80, no flash attention.",
                     "Attention uses the memory-efficient or math kernels; expect slower long contexts.")
    return Check("GPU compute capability", OK, "; ".join(gpus) + f": {fa}.")


def fused_attention() -> Check | None:
    """Which fused scaled-dot-product-attention kernels torch will use; None without torch."""
    if not installed("torch"):
        return None
    import torch

    if not _cuda_usable():
        # On the CPU torch's SDPA has one fused (flash-style) kernel, always built in.
        return Check("Fused attention", OK, "CPU: torch's fused SDPA kernel.")
    cuda = torch.backends.cuda
    flash = cuda.is_flash_attention_available() and cuda.flash_sdp_enabled()
    kernels = {
        "flash": flash,
        "mem-efficient": cuda.mem_efficient_sdp_enabled(),
        "cuDNN": cuda.cudnn_sdp_enabled(),
        "math": cuda.math_sdp_enabled(),
    }
    shown = ", ".join(f"{name} {'on' if on else 'off'}" for name, on in kernels.items())
    ampere = min(torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())) >= (8, 0)
    if ampere and not flash:
        return Check("Fused attention", WARN, f"SDPA kernels: {shown}; the GPU supports flash attention "
                     "but this torch does not offer it.",
                     "Install an official CUDA build of torch, or re-enable it "
                     "(torch.backends.cuda.enable_flash_sdp(True)).")
    if not (flash or kernels["mem-efficient"] or kernels["cuDNN"]):
        return Check("Fused attention", WARN, f"SDPA kernels: {shown}; only the unfused math kernel is on.",
                     "Re-enable the fused kernels (torch.backends.cuda.enable_mem_efficient_sdp(True)).")
    return Check("Fused attention", OK, f"SDPA kernels: {shown}.")


def quantized_kernels() -> Check | None:
    """Whether quantized weights stay packed on CUDA (our Triton kernels); None without CUDA."""
    if not _cuda_usable():
        return None
    if importlib.util.find_spec("triton") is None:
        return Check("Quantized kernels", WARN, "Triton is not installed: quantized weights (--isq, GGUF, UQFF) "
                     "are dequantized at load on CUDA and take the compute dtype's memory.",
                     "pip install triton (torch's CUDA builds for Linux normally bring it).")
    from importlib.metadata import version

    return Check("Quantized kernels", OK, f"Triton {version('triton')}: quantized weights stay packed on the GPU.")


def _cuda_usable() -> bool:
    if not installed("torch"):
        return False
    import torch

    return torch.cuda.is_available()


def machine_checks() -> list[Check]:
    # Named here so a probe that crashes is reported under the name its check would have had.
    probes = {"CPU extensions": cpu_extensions, "Backends": backends_installed, "torch / hardware":
              torch_matches_hardware, "MLX / hardware": mlx_matches_hardware, "GPU compute capability": gpu_compute,
              "Fused attention": fused_attention, "Quantized kernels": quantized_kernels}
    return [check for check in (guarded(probe, name) for name, probe in probes.items()) if check is not None]


def guarded(probe, name: str):
    """Run a probe; if it crashes (a broken torch install, say), that is itself the finding.

    The failure becomes an error check, so the rest of the report still prints.
    """
    try:
        return probe()
    except Exception as exc:  # noqa: BLE001 - any failure of a probe is a diagnosis, not a crash
        return Check(name, ERROR, f"The check itself failed: {type(exc).__name__}: {exc}",
                     "Reinstall the package named above; report a bug if it persists.")
