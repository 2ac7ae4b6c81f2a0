"""Every option's size, context room and status on a machine, and the one a profile recommends."""

from __future__ import annotations

from dataclasses import dataclass

from mistralrs.engine.compiling import compiles_layers
from mistralrs.errors import UserError
from mistralrs.quant.resident import quantized_compute_dtype
from mistralrs.tune.estimate import (
    context_length,
    estimate_size,
    kv_bytes_per_token,
    parameter_count,
    text_config,
)
from mistralrs.tune.machine import Machine
from mistralrs.tune.metadata import ModelMetadata
from mistralrs.tune.quant_types import (
    DTYPE_OF_TORCH_NAME,
    UNQUANTIZED_BITS,
    QuantType,
    quantized_types,
    unquantized,
)

PROFILES = ("quality", "balanced", "fast")
FITS, HYBRID, TOO_LARGE = "fits", "hybrid", "too_large"
# A model that loads but has no room for a conversation does not fit: ask for this many tokens.
MIN_CONTEXT = 2048

# Per profile, the types to try in order; the first that fits is recommended. `None` is the
# model unquantized. Balanced starts at 8 bits (near-lossless at half the memory), fast at 4
# (decoding is memory-bound, so fewer bytes per weight is faster).
_CANDIDATES = {
    "torch": {"quality": [None, "q8_0", "q6k", "q5k", "q4k", "q3k", "q2k"],
              "balanced": ["q8_0", "q6k", "q5k", "q4k", "q3k", "q2k"],
              "fast": ["q4k", "q3k", "q2k"]},
    "mlx": {"quality": [None, "afq8", "afq6", "afq4", "afq3", "afq2"],
            "balanced": ["afq8", "afq6", "afq4", "afq3", "afq2"],
            "fast": ["afq4", "afq3", "afq2"]},
}


@dataclass(frozen=True)
class Option:
    quant: QuantType
    size_bytes: int
    context_tokens: int  # tokens of KV cache that fit next to the model (0 unless it fits)
    status: str
    recommended: bool = False


@dataclass(frozen=True)
class Analysis:
    meta: ModelMetadata
    machine: Machine
    backend: str
    profile: str
    compute_dtype: str
    max_context: int
    kv_bytes_per_token: int
    parameters: int
    options: tuple[Option, ...]
    compiled_layers: bool = False  # sizes include the compiler a compiled load keeps resident

    @property
    def recommended(self) -> Option | None:
        return next((o for o in self.options if o.recommended), None)


def compute_dtype(requested: str, config: dict, backend: str, machine: Machine) -> str:
    """The dtype the loader would run at (as engine.api resolves `--dtype auto`)."""
    if requested != "auto":
        return requested
    stored = text_config(config).get("torch_dtype") or text_config(config).get("dtype")
    dtype = DTYPE_OF_TORCH_NAME.get(stored, "f32")
    if dtype == "f16" and backend == "torch" and machine.kind == "cpu":
        return "f32"  # the loader upcasts fp16 on the CPU, where fp16 kernels are slow
    return dtype


def analyse(meta: ModelMetadata, machine: Machine, *, backend: str, profile: str, dtype: str = "auto") -> Analysis:
    if profile not in PROFILES:
        raise UserError(f"Unknown profile `{profile}`: use quality, balanced or fast.", param="profile")
    compute = compute_dtype(dtype, meta.config, backend, machine)
    kv = kv_bytes_per_token(meta.config, compute)
    max_context = context_length(meta.config)
    # The model's own dtype first, then the other unquantized dtypes, then every quantized type.
    types = [unquantized(compute)] + [unquantized(d) for d in UNQUANTIZED_BITS if d != compute]
    types += quantized_types(backend)
    options = [_option(meta, machine, backend, t, compute, max_context) for t in types]
    pick = _pick(options, backend, profile, compute)
    options = [Option(o.quant, o.size_bytes, o.context_tokens, o.status, o is pick) for o in options]
    return Analysis(meta, machine, backend, profile, compute, max_context, kv, parameter_count(meta), tuple(options),
                    compiles_layers(backend, _device(backend, machine)))


def _option(meta: ModelMetadata, machine: Machine, backend: str, quant: QuantType, compute: str,
            max_context: int) -> Option:
    device = _device(backend, machine)
    size = estimate_size(meta, quant, compute, backend=backend, device=device,
                         compiled=compiles_layers(backend, device)).total_bytes
    # The KV cache is kept at the activations' dtype: the row's own when unquantized, and with
    # ISQ the dtype the quantized kernels run at.
    activations = quantized_compute_dtype(compute, backend, device) if quant.quantized else quant.name
    kv = kv_bytes_per_token(meta.config, activations)
    room = max(0, machine.budget_bytes - size) // kv if kv else max_context
    context = min(room, max_context)
    if size <= machine.budget_bytes and context >= min(MIN_CONTEXT, max_context):
        return Option(quant, size, context, FITS)
    if machine.offload_bytes and size <= machine.budget_bytes + machine.offload_bytes:
        return Option(quant, size, 0, HYBRID)
    return Option(quant, size, 0, TOO_LARGE)


def _device(backend: str, machine: Machine) -> str:
    return "metal" if backend == "mlx" and machine.kind == "metal" else "cuda" if machine.kind == "cuda" else "cpu"


def _pick(options: list[Option], backend: str, profile: str, compute: str) -> Option | None:
    by_name = {o.quant.name: o for o in options}
    names = [compute if name is None else name for name in _CANDIDATES[backend][profile]]
    for status in (FITS, HYBRID):
        for name in names:
            if by_name[name].status == status:
                return by_name[name]
    return None


def recommended_command(analysis: Analysis, *, backend_given: bool) -> str | None:
    option = analysis.recommended
    if option is None:
        return None
    parts = ["mistralrs", "serve", "-m", _quote(analysis.meta.model_id)]
    if backend_given:
        parts += ["--backend", analysis.backend]
    dtype = load_dtype(analysis)
    if dtype != "auto":
        parts += ["--dtype", dtype]
    if option.quant.quantized:
        parts += ["--isq", option.quant.name]
    return " ".join(parts)


def load_dtype(analysis: Analysis) -> str:
    """The --dtype the recommended option needs: `auto` when the checkpoint's own dtype is it."""
    option = analysis.recommended
    wanted = analysis.compute_dtype if option is None or option.quant.quantized else option.quant.name
    auto = compute_dtype("auto", analysis.meta.config, analysis.backend, analysis.machine)
    return "auto" if wanted == auto else wanted


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
