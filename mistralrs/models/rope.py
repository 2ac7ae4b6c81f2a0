"""Rotary position embeddings: every scaling variant reduces to (inv_freq, attention scale).

The frequencies are computed once on the host with numpy; the backend's `rope`
op applies them. Formulas follow the Hugging Face reference implementations
(`transformers.modeling_rope_utils`), which the tests compare against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mistralrs.errors import ModelLoadError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope", "su")


def rope_parameters(config: dict, layer_kind: str | None = None) -> dict:
    """The rope settings of a config in one shape, whichever transformers version wrote it.

    transformers >= 5 writes `rope_parameters` (per layer kind for Gemma 3);
    older checkpoints carry `rope_theta` and `rope_scaling` at the top level.
    """
    params = config.get("rope_parameters")
    if isinstance(params, dict) and layer_kind is not None and layer_kind in params:
        params = params[layer_kind]
    out: dict = {}
    if isinstance(params, dict) and "rope_theta" in params:
        out.update(params)
    else:
        out["rope_theta"] = config.get("rope_theta", 10000.0)
        scaling = config.get("rope_scaling")
        if isinstance(scaling, dict):
            out.update(scaling)
    kind = out.get("rope_type", out.get("type", "default"))
    out["rope_type"] = "longrope" if kind == "su" else kind
    return out


@dataclass
class RopeSpec:
    """What one attention layer needs to rotate its queries and keys."""

    inv_freq: np.ndarray  # float32, head_dim * partial_rotary_factor / 2 entries
    attention_scale: float = 1.0
    # longrope switches to other frequencies once a sequence outgrows the original context.
    long_inv_freq: np.ndarray | None = None
    original_max_position: int | None = None
    long_attention_scale: float | None = None

    def for_length(self, end_position: int) -> tuple[np.ndarray, float]:
        """Frequencies and scale for a forward pass whose last position is end_position - 1."""
        if self.long_inv_freq is not None and end_position > self.original_max_position:
            return self.long_inv_freq, self.long_attention_scale
        return self.inv_freq, self.attention_scale


def build_rope(config: dict, head_dim: int, layer_kind: str | None = None, theta: float | None = None) -> RopeSpec:
    params = rope_parameters(config, layer_kind)
    base = float(theta if theta is not None else params["rope_theta"])
    partial = float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
    dim = int(head_dim * partial)
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
    inv_freq = 1.0 / (base**exponents)
    kind = params["rope_type"]
    if kind == "default":
        return RopeSpec(inv_freq.astype(np.float32))
    if kind == "linear":
        return RopeSpec((inv_freq / float(params["factor"])).astype(np.float32))
    if kind == "llama3":
        return RopeSpec(_llama3(inv_freq, params).astype(np.float32))
    if kind == "yarn":
        return _yarn(config, params, base, dim)
    if kind == "longrope":
        return _longrope(config, params, base, dim)
    raise ModelLoadError(
        f"config.json asks for rope type `{kind}`, which mistralrs does not implement; "
        f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}."
    )


def _llama3(inv_freq: np.ndarray, p: dict) -> np.ndarray:
    factor = float(p["factor"])
    low, high = float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old_len = float(p["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return np.where(is_medium, smoothed, scaled)


def _yarn(config: dict, p: dict, base: float, dim: int) -> RopeSpec:
    factor = float(p["factor"])
    original = p.get("original_max_position_embeddings") or config.get("max_position_embeddings")
    original = float(original)

    def get_mscale(scale, mscale=1.0):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention = p.get("attention_factor")
    if attention is None:
        mscale, mscale_all = p.get("mscale"), p.get("mscale_all_dim")
        if mscale and mscale_all:
            attention = get_mscale(factor, mscale) / get_mscale(factor, mscale_all)
        else:
            attention = get_mscale(factor)
    beta_fast = p.get("beta_fast") or 32.0
    beta_slow = p.get("beta_slow") or 1.0

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    extrapolation_factor = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    return RopeSpec(inv_freq.astype(np.float32), float(attention))


def _longrope(config: dict, p: dict, base: float, dim: int) -> RopeSpec:
    max_pos = config.get("max_position_embeddings")
    original = config.get("original_max_position_embeddings") or p.get("original_max_position_embeddings")
    if original:
        factor = max_pos / original
    else:
        original, factor = max_pos, float(p.get("factor", 1.0))
    attention = p.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim

    def freqs(ext):
        ext = np.asarray(ext, dtype=np.float32)
        if ext.shape != (dim // 2,):
            raise ModelLoadError(
                f"config.json longrope factors have {ext.shape[0]} entries but the rotary "
                f"dimension needs {dim // 2}; the config does not match the model."
            )
        return (1.0 / (ext * base**exponents)).astype(np.float32)

    return RopeSpec(
        freqs(p["short_factor"]),
        float(attention),
        long_inv_freq=freqs(p["long_factor"]),
        original_max_position=int(original),
        long_attention_scale=float(attention),
    )
