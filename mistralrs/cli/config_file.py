"""Reading a `from-config` TOML file into the same `Options` objects the commands get from flags.

The layout follows mistral.rs's CLI_CONFIG format:

    command = "serve" | "run"      default_model_id = "..." (serve)   enable_thinking = true (run)
    [global]     seed, log, token_source
    [server]     port, host, ui, mcp_port, mcp_config                              (serve)
    [runtime]    max_seqs, no_kv_cache, prefix_cache_n, chat_template, jinja_explicit,
                 enable_search, search_embedding_model
    [paged_attn] mode, context_len, memory_mb, memory_fraction, block_size, cache_type
    [[models]]   kind, model_id, tokenizer, arch, dtype, chat_template, jinja_explicit,
                 backend, threads (ours: the compute backend is per model here too)
      [models.format]       format, quantized_file, tok_model_id, gqa
      [models.adapter]      lora, xlora, xlora_order, tgt_non_granular_index
      [models.quantization] in_situ_quant (or isq), from_uqff, isq_organization, imatrix, calibration_file
      [models.device]       cpu, device_layers, topology, hf_cache, max_seq_len, max_batch_size
      [models.vision]       max_edge, max_num_images, max_image_length

Every value is checked against the option it maps to (type, choices, range), and every
unknown key is an error naming it: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
import typer

from mistralrs.cli.options import GLOBAL, MODEL_LOADING, REQUIRED, RUNTIME, SERVER, ModelType, Opt, Options
from mistralrs.errors import UserError

COMMANDS = ("serve", "run")
_GROUPS = (GLOBAL, SERVER, RUNTIME, *MODEL_LOADING)
_OPTS: dict[str, Opt] = {o.name: o for group in _GROUPS for o in group.options}

# TOML key -> option name, per table. Most keys are the option's own name.
_SECTIONS: dict[str, dict[str, str]] = {
    "global": {k: k for k in ("seed", "log", "token_source")},
    "server": {k: k for k in ("port", "host", "ui", "mcp_port", "mcp_config")},
    "runtime": {k: k for k in ("max_seqs", "no_kv_cache", "prefix_cache_n", "chat_template", "jinja_explicit",
                               "enable_search", "search_embedding_model")},
    "paged_attn": {"mode": "paged_attn", "context_len": "pa_context_len", "memory_mb": "pa_memory_mb",
                   "memory_fraction": "pa_memory_fraction", "block_size": "pa_block_size",
                   "cache_type": "pa_cache_type"},
}
_MODEL_KEYS = {k: k for k in ("model_id", "tokenizer", "arch", "dtype", "chat_template", "jinja_explicit",
                              "backend", "threads")}
_MODEL_SECTIONS: dict[str, dict[str, str]] = {
    "format": {k: k for k in ("format", "quantized_file", "tok_model_id", "gqa")},
    "adapter": {k: k for k in ("lora", "xlora", "xlora_order", "tgt_non_granular_index")},
    "quantization": {"in_situ_quant": "isq", "isq": "isq", "from_uqff": "from_uqff",
                     "isq_organization": "isq_organization", "imatrix": "imatrix",
                     "calibration_file": "calibration_file"},
    "device": {k: k for k in ("cpu", "device_layers", "topology", "hf_cache", "max_seq_len", "max_batch_size")},
    "vision": {k: k for k in ("max_edge", "max_num_images", "max_image_length")},
}
_TOP_KEYS = ("command", "default_model_id", "enable_thinking", *_SECTIONS, "models")


@dataclass
class ModelEntry:
    kind: ModelType
    opts: Options


@dataclass
class FileConfig:
    command: str
    models: list[ModelEntry]
    server: Options  # [server] and [global]
    default_model_id: str | None
    enable_thinking: bool


def read_config_file(path: Path, overrides: dict[str, Any] | None = None) -> FileConfig:
    """Parse and check `path`; `overrides` (global flags typed on the command line) win over the file."""
    data = _parse(path)
    where = path.name
    _check_keys(data, _TOP_KEYS, where, "")
    command = data.get("command")
    if command not in COMMANDS:
        shown = "missing" if command is None else f"{command!r}"
        raise UserError(f"{where}: `command` is {shown}; set it to \"serve\" or \"run\".")
    shared: dict[str, Any] = {}
    for section, keys in _SECTIONS.items():
        table = _table(data, section, where)
        if section == "server" and table and command != "serve":
            raise UserError(f"{where}: [server] applies to command = \"serve\", not \"{command}\".")
        shared.update(_values(table, keys, where, section + "."))
    shared.update({k: v for k, v in (overrides or {}).items() if v is not None})
    models = _models(data, shared, where)
    default_model_id = _default_model(data, command, models, where)
    thinking = data.get("enable_thinking", False)
    if not isinstance(thinking, bool):
        raise UserError(f"{where}: `enable_thinking` must be true or false, not {thinking!r}.")
    if thinking and command != "run":
        raise UserError(f"{where}: `enable_thinking` applies to command = \"run\"; a server takes it per request.")
    if command == "run" and len(models) != 1:
        raise UserError(f"{where}: command = \"run\" chats with one model; the file has {len(models)}.")
    _check_consistency(models, shared, where)
    return FileConfig(command, models, _options(shared), default_model_id, thinking)


def _parse(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"Cannot read --file {path}: {exc.strerror or exc}.") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)  # Python 3.14 has it; before, only the message says
        message = getattr(exc, "msg", str(exc))
        if line is None:
            import re

            found = re.search(r"at line (\d+)", str(exc))
            line = int(found.group(1)) if found else None
        shown = text.splitlines()[line - 1].strip() if line and line <= len(text.splitlines()) else ""
        context = f" in `{shown}`" if shown else ""
        raise UserError(f"{path.name} is not valid TOML: line {line}{context}: {message.split(' (at line')[0]}.") from None


def _table(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: `{key}` must be a table ([{key}]), not {type(value).__name__}.")
    return value


def _check_keys(table: dict, allowed, where: str, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            raise UserError(f"{where}: unknown key `{prefix}{key}`; expected one of {', '.join(allowed)}.")


def _values(table: dict, keys: dict[str, str], where: str, prefix: str) -> dict[str, Any]:
    _check_keys(table, keys, where, prefix)
    return {keys[key]: _convert(_OPTS[keys[key]], value, f"{prefix}{key}", where) for key, value in table.items()}


def _models(data: dict, shared: dict[str, Any], where: str) -> list[ModelEntry]:
    entries = data.get("models")
    if not entries:
        raise UserError(f"{where}: no models; add at least one [[models]] table with `kind` and `model_id`.")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{where}: `models` must be an array of tables ([[models]]).")
    models = []
    for index, entry in enumerate(entries):
        prefix = f"models[{index}]."
        _check_keys(entry, ("kind", *_MODEL_KEYS, *_MODEL_SECTIONS), where, prefix)
        kinds = [k.value for k in ModelType]
        if entry.get("kind") not in kinds:
            got = "missing" if "kind" not in entry else f"{entry['kind']!r}"
            raise UserError(f"{where}: `{prefix}kind` is {got}; use one of {', '.join(kinds)}.")
        if not isinstance(entry.get("model_id"), str) or not entry["model_id"].strip():
            raise UserError(f"{where}: `{prefix}model_id` is missing; name a Hugging Face repo or a local folder.")
        values = dict(shared)
        values.update(_values({k: v for k, v in entry.items() if k in _MODEL_KEYS}, _MODEL_KEYS, where, prefix))
        for section, keys in _MODEL_SECTIONS.items():
            table = _table(entry, section, where + f" ({prefix.rstrip('.')})")
            if section == "device" and isinstance(table.get("device_layers"), list):
                table = {**table, "device_layers": ";".join(map(str, table["device_layers"]))}
            values.update(_values(table, keys, where, f"{prefix}{section}."))
        models.append(ModelEntry(ModelType(entry["kind"]), _options(values)))
    ids = [m.opts.model_id for m in models]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise UserError(f"{where}: model_id {repeated[0]!r} appears twice; each model is served under its model_id.")
    return models


def _default_model(data: dict, command: str, models: list[ModelEntry], where: str) -> str | None:
    default = data.get("default_model_id")
    if default is None:
        return None
    if command != "serve":
        raise UserError(f"{where}: `default_model_id` applies to command = \"serve\".")
    ids = [m.opts.model_id for m in models]
    if default not in ids:
        raise UserError(f"{where}: default_model_id {default!r} is not one of the models: {', '.join(ids)}.")
    return default


def _check_consistency(models: list[ModelEntry], shared: dict[str, Any], where: str) -> None:
    # The device is the process's, not a model's: models that set `cpu` must agree, and the
    # others follow them.
    chosen = {m.opts.cpu for m in models if m.opts.given("cpu")}
    if len(chosen) > 1:
        raise UserError(f"{where}: `device.cpu` must be the same for every model that sets it.")
    if chosen:
        cpu = chosen.pop()
        for m in models:
            m.opts.cpu = cpu
    if shared.get("search_embedding_model") is not None and not shared.get("enable_search"):
        raise UserError(f"{where}: `runtime.search_embedding_model` needs `runtime.enable_search = true`.")
    for m in models:
        if m.opts.lora is not None and m.opts.xlora is not None:
            raise UserError(f"{where}: {m.opts.model_id}: `adapter.lora` and `adapter.xlora` exclude each other.")
        if m.opts.xlora_order is not None and m.opts.xlora is None:
            raise UserError(f"{where}: {m.opts.model_id}: `adapter.xlora_order` needs `adapter.xlora`.")


def _options(values: dict[str, Any]) -> Options:
    """Every option at its default, then the file's values; `given` is what the file (or flags) set."""
    defaults = {name: (None if o.default is REQUIRED else o.default) for name, o in _OPTS.items()}
    return Options({**defaults, **values}, set(values))


def _convert(option: Opt, value: Any, key: str, where: str) -> Any:
    """`value` as the option's type, or a UserError naming the key and what it takes."""
    def wrong(expected: str) -> UserError:
        return UserError(f"{where}: `{key}` must be {expected}, not {value!r}.")

    parser = option.extra.get("parser")
    kind = option.type
    if parser is not None:
        if not isinstance(value, str):
            raise wrong("a string")
        try:
            return parser(value)
        except typer.BadParameter as exc:
            raise UserError(f"{where}: `{key}`: {exc.message}") from None
    if typing.get_origin(kind) is typing.Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise wrong("one of " + ", ".join(f'"{c}"' for c in choices))
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and isinstance(value, float)):
            raise wrong("an integer" if kind is int else "a number")
        low, high = option.extra.get("min"), option.extra.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise wrong(bounds)
        return kind(value)
    if not isinstance(value, str):
        raise wrong("a string")
    return Path(value).expanduser() if kind is Path else value
