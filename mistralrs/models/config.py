"""Reading a Hugging Face config.json into the specs our layers take."""

from __future__ import annotations

from mistralrs.errors import ModelLoadError
from mistralrs.models.decoder import DecoderSpec
from mistralrs.models.layers import AttentionSpec
from mistralrs.models.rope import build_rope


class ConfigReader:
    """Typed access to config.json with errors that name the missing or bad key."""

    def __init__(self, config: dict, origin: str = "config.json"):
        self.config = config
        self.origin = origin

    def require(self, key: str, kind=int):
        if self.config.get(key) is None:
            raise ModelLoadError(
                f"{self.origin} has no `{key}`, which this architecture needs; "
                "the file is incomplete or belongs to another kind of model."
            )
        return self.typed(key, self.config[key], kind)

    def get(self, key: str, default=None, kind=None):
        value = self.config.get(key)
        if value is None:
            return default
        return self.typed(key, value, kind) if kind else value

    def typed(self, key, value, kind):
        try:
            if kind is int and (isinstance(value, bool) or float(value) != int(value)):
                raise ValueError
            return kind(value)
        except (TypeError, ValueError):
            raise ModelLoadError(
                f"{self.origin} has `{key}` = {value!r}, which is not a valid {kind.__name__}."
            ) from None


def llama_family_spec(
    config: dict,
    *,
    qkv_bias: bool = False,
    o_bias: bool = False,
    qk_norm: bool = False,
    windows: list[int | None] | None = None,
    fused_checkpoint: bool = False,
    default_activation: str = "silu",
) -> DecoderSpec:
    """The spec of a Llama-shaped decoder; architecture files pass what differs."""
    c = ConfigReader(config)
    hidden = c.require("hidden_size")
    heads = c.require("num_attention_heads")
    kv_heads = c.get("num_key_value_heads", heads, int)
    head_dim = c.get("head_dim", None, int) or hidden // heads
    layers = c.require("num_hidden_layers")
    if heads % kv_heads:
        raise ModelLoadError(
            f"config.json has {heads} attention heads and {kv_heads} key/value heads; "
            "the first must be a multiple of the second."
        )
    rope = build_rope(config, head_dim)
    eps = c.get("rms_norm_eps", 1e-6, float)
    windows = windows or [None] * layers
    attention = [
        AttentionSpec(
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rope=rope,
            scale=head_dim**-0.5,
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            qk_norm_eps=eps if qk_norm else None,
            window=windows[i],
            fused_qkv_checkpoint=fused_checkpoint,
        )
        for i in range(layers)
    ]
    return DecoderSpec(
        vocab_size=c.require("vocab_size"),
        hidden_size=hidden,
        intermediate_size=c.require("intermediate_size"),
        num_layers=layers,
        rms_norm_eps=eps,
        activation=c.get("hidden_act", default_activation),
        attention=attention,
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        fused_mlp_checkpoint=fused_checkpoint,
        mlp_bias=bool(c.get("mlp_bias", False)),
    )


def uniform_window(config: dict) -> list[int | None] | None:
    """Sliding window on every layer when config.json sets `sliding_window` (Mistral, Phi-3)."""
    window = config.get("sliding_window")
    layers = int(config.get("num_hidden_layers", 0))
    return [int(window)] * layers if window else None


def qwen_windows(config: dict) -> list[int | None] | None:
    """Qwen2/Qwen3 use their window only with use_sliding_window, on layers >= max_window_layers."""
    layer_types = config.get("layer_types")
    window = config.get("sliding_window")
    if layer_types and window:
        return [int(window) if t == "sliding_attention" else None for t in layer_types]
    if not config.get("use_sliding_window") or not window:
        return None
    first = int(config.get("max_window_layers", 0))
    layers = int(config["num_hidden_layers"])
    return [int(window) if i >= first else None for i in range(layers)]
