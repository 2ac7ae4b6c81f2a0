"""Where a model comes from: a local folder, a built-in alias, a GGUF or GGML file, or a Hugging Face repo."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from mistralrs.errors import ModelLoadError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What an HF folder needs for text generation; everything else in a repo is skipped.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt"]


@dataclass
class ModelSource:
    model_id: str  # what the user typed
    folder: str | None = None  # HF-style folder (config.json, safetensors, tokenizer files)
    gguf_files: list[str] = field(default_factory=list)  # llama.cpp file(s), GGUF or GGML
    file_format: str = "gguf"  # of gguf_files: "gguf", or "ggml" (llama.cpp's format before GGUF)

    @property
    def is_gguf(self) -> bool:
        """A llama.cpp file (GGUF, or GGML: see `file_format`) rather than an HF folder."""
        return bool(self.gguf_files)

    @property
    def is_ggml(self) -> bool:
        return self.is_gguf and self.file_format == "ggml"


def _llama_cpp_source(model_id: str, folder: str, files: list[str], fmt: str) -> ModelSource:
    """GGUF or GGML files: --format says which, else the first file's magic number."""
    from mistralrs.engine.ggml_file import sniff_ggml

    is_ggml = fmt == "ggml" or (fmt == "auto" and sniff_ggml(files[0]))
    if is_ggml and len(files) > 1:
        raise ModelLoadError(
            f"-f/--quantized-file names {len(files)} files, and a GGML model is one file; "
            "name the single GGML .bin file."
        )
    return ModelSource(model_id, folder=folder, gguf_files=files, file_format="ggml" if is_ggml else "gguf")


def resolve_source(
    model_id: str,
    *,
    quantized_files: str | None = None,
    fmt: str = "auto",
    hf_cache: str | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
) -> ModelSource:
    """Turn `-m` (plus `-f` / `--format`) into files on disk, downloading from the hub when needed."""
    if not model_id or not model_id.strip():
        raise ModelLoadError("No model given: pass -m/--model-id with a local folder or a Hugging Face repo id.")
    if fmt not in ("auto", "plain", "gguf", "ggml"):
        raise ModelLoadError(f"Unknown --format `{fmt}`: use plain, gguf or ggml (or leave it out to detect).")
    parts = [p.strip() for p in (quantized_files or "").split(";") if p.strip()]

    from mistralrs.engine.builtin_models import resolve_builtin

    builtin = resolve_builtin(model_id)
    if builtin is not None:
        return ModelSource(model_id, gguf_files=builtin)

    expanded = os.path.expanduser(model_id)
    if os.path.isfile(expanded):
        from mistralrs.engine.ggml_file import sniff_ggml

        if expanded.endswith(".gguf") or fmt in ("gguf", "ggml") or sniff_ggml(expanded):
            folder = os.path.dirname(os.path.abspath(expanded))
            return _llama_cpp_source(model_id, folder, [expanded], fmt)
        raise ModelLoadError(
            f"-m {model_id} is a file; pass the model's folder (with config.json), "
            "or a .gguf or GGML file, or use -f/--quantized-file for quantized files inside a folder."
        )
    if os.path.isdir(expanded):
        return _local_folder(model_id, expanded, parts, fmt)
    if _looks_like_path(model_id) or not REPO_ID.match(model_id):
        raise ModelLoadError(
            f"-m {model_id}: no such file or folder, and it is not a Hugging Face repo id "
            "(`owner/name`). Check the path, or give a repo id such as Qwen/Qwen3-4B."
        )
    return _from_hub(model_id, parts, fmt, hf_cache, token, revision)


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


def _local_folder(model_id: str, folder: str, parts: list[str], fmt: str) -> ModelSource:
    if parts:
        files = [p if os.path.isabs(p) else os.path.join(folder, p) for p in parts]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise ModelLoadError(f"-f/--quantized-file: {', '.join(missing)} does not exist.")
        return _llama_cpp_source(model_id, folder, files, fmt)
    if fmt == "ggml":
        raise ModelLoadError(
            f"--format ggml needs -f/--quantized-file naming the GGML .bin file in {folder} "
            "(or pass the file itself to -m)."
        )
    if fmt == "gguf" or not os.path.exists(os.path.join(folder, "config.json")):
        ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
        if fmt == "gguf" or ggufs:
            if len(ggufs) == 1:
                return ModelSource(model_id, folder=folder, gguf_files=[os.path.join(folder, ggufs[0])])
            raise ModelLoadError(
                f"{folder} holds {len(ggufs)} .gguf files and no config.json; name the one to load "
                "with -f/--quantized-file."
            )
        raise ModelLoadError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder. "
            "Point -m at the folder that holds config.json, or pass a GGUF file with -f."
        )
    return ModelSource(model_id, folder=folder)


def _from_hub(model_id, parts, fmt, hf_cache, token, revision) -> ModelSource:
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise ModelLoadError("huggingface_hub is not installed: `pip install huggingface_hub`.") from None
    try:
        if parts:
            files = [
                hf_hub_download(model_id, p, cache_dir=hf_cache, token=token, revision=revision) for p in parts
            ]
            return _llama_cpp_source(model_id, os.path.dirname(files[0]), files, fmt)
        folder = snapshot_download(
            model_id, cache_dir=hf_cache, token=token, revision=revision, allow_patterns=HUB_PATTERNS
        )
    except GatedRepoError:
        raise ModelLoadError(
            f"{model_id} is gated: accept its license on huggingface.co, then `mistralrs login` "
            "(or pass --token-source)."
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"{model_id} was not found on the Hugging Face hub (or it is private: log in with `mistralrs login`)."
        ) from None
    except RevisionNotFoundError:
        raise ModelLoadError(f"{model_id} has no revision {revision!r}.") from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"{model_id} is not in the Hugging Face cache and the hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1). Download it once while online, point --hf-cache at a "
            "cache that has it, or pass a local folder to -m."
        ) from None
    except OSError as exc:
        raise ModelLoadError(f"Downloading {model_id} failed: {exc}") from None
    if fmt in ("gguf", "ggml") and not parts:
        kind = ".gguf file(s)" if fmt == "gguf" else "GGML .bin file"
        raise ModelLoadError(f"--format {fmt} needs -f/--quantized-file naming the {kind} in {model_id}.")
    return _local_folder(model_id, folder, [], fmt)
