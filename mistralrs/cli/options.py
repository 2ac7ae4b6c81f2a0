"""The options several commands share, declared once, and the decorator that attaches them.

Typer reads a command's options from its function signature. `run`, `serve`,
`bench`, `tune` and `quantize` share dozens of model-loading options, so rather
than repeating them in every signature, `with_options(*groups)` appends the
groups' parameters to the command's signature and hands their values to the
command bundled in one `Options` object.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from mistralrs.cli.token_source import TokenSource, parse_token_source

REQUIRED = ...  # the default of an option the user must give


@dataclass(frozen=True)
class Opt:
    """One option: the Python name the command reads, its flags, type, default and help."""

    name: str
    flags: tuple[str, ...]
    type: Any
    default: Any
    help: str
    extra: dict = field(default_factory=dict)  # more typer.Option arguments: min=, metavar=, ...


@dataclass(frozen=True)
class OptionGroup:
    panel: str  # the heading the options get in --help
    options: tuple[Opt, ...]


def opt(name: str, *flags: str, type: Any, default: Any = None, help: str, **extra: Any) -> Opt:
    return Opt(name, flags, type, default, help, extra)


class ModelType(str, Enum):
    """The optional MODEL_TYPE positional of run/serve/tune/bench/quantize."""

    auto = "auto"
    text = "text"
    vision = "vision"
    diffusion = "diffusion"
    speech = "speech"
    embedding = "embedding"


ModelTypeArgument = Annotated[
    ModelType,
    typer.Argument(metavar="MODEL_TYPE", case_sensitive=False,
                   help="Model type; `auto` detects it from the model's config."),
]

# ---- the groups ----------------------------------------------------------------------------------

GLOBAL = OptionGroup("Global options", (
    opt("seed", "--seed", type=int, help="Random seed for reproducibility."),
    opt("log", "-l", "--log", type=Path, metavar="PATH",
        help="Append every request and response to this file as JSON lines."),
    opt("token_source", "--token-source", type=TokenSource, parser=parse_token_source, metavar="SOURCE",
        show_default="cache", help="Hugging Face token: cache, literal:<token>, env:<VAR>, path:<file> or none."),
))

RUNTIME = OptionGroup("Runtime", (
    opt("max_seqs", "--max-seqs", type=int, default=32, min=1, help="Maximum concurrent sequences."),
    opt("no_kv_cache", "--no-kv-cache", type=bool, default=False, help="Disable KV cache entirely."),
    opt("prefix_cache_n", "--prefix-cache-n", type=int, default=16, min=0,
        help="Number of prefix caches to hold (0 to disable)."),
    opt("chat_template", "-c", "--chat-template", type=str, metavar="PATH",
        help="Custom chat template file (.json or .jinja)."),
    opt("jinja_explicit", "-j", "--jinja-explicit", type=str, metavar="PATH",
        help="Explicit JINJA template override."),
    opt("enable_search", "--enable-search", type=bool, default=False, help="Enable web search."),
    opt("search_embedding_model", "--search-embedding-model", type=str, metavar="MODEL",
        help="Embedding model for search."),
))

MODEL_SOURCE = OptionGroup("Model source", (
    opt("model_id", "-m", "--model-id", type=str, default=REQUIRED, metavar="ID",
        help="Hugging Face model id, local folder, .gguf file or built-in alias (smollm2)."),
    opt("tokenizer", "-t", "--tokenizer", type=str, metavar="PATH", help="Path to local tokenizer.json file."),
    opt("arch", "-a", "--arch", type=str, metavar="ARCH", help="Model architecture (auto-detected if not given)."),
    opt("dtype", "--dtype", type=Literal["auto", "bf16", "f16", "f32"], default="auto", help="Model data type."),
))

FORMAT = OptionGroup("Format", (
    opt("format", "--format", type=Literal["plain", "gguf", "ggml"],
        help="Model format (auto-detected if not given)."),
    opt("quantized_file", "-f", "--quantized-file", type=str, metavar="FILE",
        help="Quantized model filename(s) for GGUF/GGML (semicolon-separated)."),
    opt("tok_model_id", "--tok-model-id", type=str, metavar="ID",
        help="Model ID for the tokenizer when using a quantized format."),
    opt("gqa", "--gqa", type=int, default=1, min=1, help="GQA value for GGML models."),
))

QUANTIZATION = OptionGroup("Quantization", (
    opt("isq", "--isq", type=str, metavar="LEVEL", help="In-situ quantization level (4, 8, q4_0, q4k, ...)."),
    opt("isq_organization", "--isq-organization", type=Literal["default", "moqe"],
        help="ISQ organization strategy."),
    opt("imatrix", "--imatrix", type=Path, metavar="PATH", help="imatrix file for enhanced quantization."),
    opt("calibration_file", "--calibration-file", type=Path, metavar="PATH",
        help="Calibration file for imatrix generation."),
    opt("from_uqff", "--from-uqff", type=str, metavar="FILES",
        help="Load from UQFF file(s) (semicolon-separated; shards are found automatically)."),
))

PAGED_ATTENTION = OptionGroup("PagedAttention", (
    opt("paged_attn", "--paged-attn", type=Literal["auto", "on", "off"], default="auto",
        help="PagedAttention: auto (on for CUDA), on or off."),
    opt("pa_context_len", "--pa-context-len", type=int, min=1, metavar="LEN",
        help="Allocate the KV cache for this context length (exclusive with the two below)."),
    opt("pa_memory_mb", "--pa-memory-mb", type=int, min=1, metavar="MB", help="Allocate this much GPU memory in MB."),
    opt("pa_memory_fraction", "--pa-memory-fraction", type=float, min=0.0, max=1.0, metavar="FRACTION",
        help="Allocate this fraction of GPU memory (0.0-1.0)."),
    opt("pa_block_size", "--pa-block-size", type=int, min=1, metavar="SIZE",
        help="Tokens per block (default: 32 on CUDA)."),
    opt("pa_cache_type", "--pa-cache-type", type=str, default="auto", metavar="TYPE",
        help="KV cache quantization type."),
))

DEVICE = OptionGroup("Device mapping", (
    opt("device_layers", "-n", "--device-layers", type=str, metavar="MAPPING",
        show_default="auto", help="Device layer mapping (format: ORD:NUM;...)."),
    opt("topology", "--topology", type=Path, metavar="PATH", help="Topology YAML file for device mapping."),
    opt("hf_cache", "--hf-cache", type=Path, metavar="PATH", help="Custom Hugging Face cache directory."),
    opt("cpu", "--cpu", type=bool, default=False, help="Force CPU-only execution."),
    opt("max_seq_len", "--max-seq-len", type=int, default=4096, min=1, metavar="LEN",
        help="Max sequence length for automatic device mapping; when given, also the context length."),
    opt("max_batch_size", "--max-batch-size", type=int, default=1, min=1, metavar="SIZE",
        help="Max batch size for automatic device mapping."),
))

ADAPTERS = OptionGroup("LoRA and X-LoRA", (
    opt("lora", "--lora", type=str, metavar="ADAPTERS", help="LoRA adapter(s) (semicolon-separated)."),
    opt("xlora", "--xlora", type=str, metavar="ADAPTER", help="X-LoRA adapter."),
    opt("xlora_order", "--xlora-order", type=Path, metavar="FILE", help="X-LoRA ordering file (JSON)."),
    opt("tgt_non_granular_index", "--tgt-non-granular-index", type=int, min=0, metavar="INDEX",
        help="X-LoRA target non-granular index."),
))

VISION = OptionGroup("Vision", (
    opt("max_edge", "--max-edge", type=int, min=1, metavar="SIZE",
        help="Maximum edge length for image resizing (aspect ratio preserved)."),
    opt("max_num_images", "--max-num-images", type=int, min=1, metavar="N",
        help="Maximum number of images per request."),
    opt("max_image_length", "--max-image-length", type=int, min=1, metavar="SIZE",
        help="Maximum image dimension for device mapping."),
))

BACKEND = OptionGroup("Backend", (
    opt("backend", "--backend", type=Literal["auto", "torch", "mlx"], default="auto",
        help="Compute backend: auto picks MLX on Apple Silicon, else torch."),
    opt("threads", "--threads", type=int, min=1, metavar="N", help="CPU threads (default: the backend's)."),
))

SERVER = OptionGroup("Server", (
    opt("port", "-p", "--port", type=int, default=1234, min=1, max=65535, help="HTTP server port."),
    opt("host", "--host", type=str, default="0.0.0.0", help="Bind address."),
    opt("ui", "--ui", type=bool, default=False, help="Serve the built-in web UI at /ui."),
    opt("mcp_port", "--mcp-port", type=int, min=1, max=65535, metavar="PORT", help="MCP protocol server port."),
    opt("mcp_config", "--mcp-config", type=Path, metavar="PATH", help="MCP client configuration file."),
))

# Everything that decides how a model is loaded (run, serve, bench).
MODEL_LOADING = (MODEL_SOURCE, FORMAT, QUANTIZATION, PAGED_ATTENTION, DEVICE, ADAPTERS, VISION, BACKEND)


# ---- attaching groups to commands ----------------------------------------------------------------


class Options:
    """The values of a command's shared options, by attribute; `given(name)` says if it was typed."""

    def __init__(self, values: dict[str, Any], given: set[str]):
        self.__dict__.update(values)
        self._given = given

    def given(self, name: str) -> bool:
        return name in self._given

    def get(self, name: str, default: Any = None) -> Any:
        return self.__dict__.get(name, default)

    def items(self):
        return ((k, v) for k, v in self.__dict__.items() if not k.startswith("_"))


def _parameter(option: Opt, panel: str) -> inspect.Parameter:
    info = typer.Option(*option.flags, help=option.help, rich_help_panel=panel, **option.extra)
    default = inspect.Parameter.empty if option.default is REQUIRED else option.default
    annotation = option.type if option.default is not None or option.type is bool else option.type | None
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, info])


def with_options(*groups: OptionGroup):
    """Decorator: add the groups' options to a command; it receives them as `opts: Options`.

    Global options may also come before the command name (`mistralrs --seed 1 run ...`);
    those were stored on the root context by the app callback and fill in what the
    command line after the command name left unset.
    """
    options = [(option, group.panel) for group in groups for option in group.options]
    names = {option.name for option, _ in options}

    def decorate(command):
        signature = inspect.signature(command, eval_str=True).parameters.values()
        # A command that wants the click context declares `ctx: typer.Context`; it gets the wrapper's.
        wants_context = [p.name for p in signature if p.annotation is typer.Context]
        own = [p for p in signature if p.name != "opts" and p.annotation is not typer.Context]
        context = inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        parameters = own + [context] + [_parameter(option, panel) for option, panel in options]

        @functools.wraps(command)
        def wrapper(**values):
            ctx = values.pop(_CONTEXT)
            shared = {name: values.pop(name) for name in names}
            given = {name for name in names if _typed(ctx, name)}
            for name, value in (ctx.find_root().obj or {}).items():
                if name in shared and name not in given and value is not None:
                    shared[name] = value
                    given.add(name)
            values.update(dict.fromkeys(wants_context, ctx))
            return command(opts=Options(shared, given), **values)

        del wrapper.__wrapped__  # typer must read the new signature, not the wrapped function's
        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


_CONTEXT = "click_context_"  # typer passes the click context to the parameter annotated typer.Context


def _typed(ctx, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")
