"""A model's config.json and tensor shapes, from safetensors headers only (never the weights).

A local folder's headers are read from disk (the first 8 bytes give the JSON header's length);
for a hub repo, huggingface_hub reads them with HTTP range requests, or from the cache offline.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

from mistralrs.errors import ModelLoadError, UserError

# Bytes per element of the safetensors dtypes a checkpoint may hold.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
               "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors name: BF16, F32, ...
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass(frozen=True)
class ModelMetadata:
    model_id: str
    config: dict
    tensors: tuple[TensorInfo, ...]


def read_metadata(model_id: str, *, token: str | bool | None = None) -> ModelMetadata:
    """The config and tensor list of a local folder or a hub repo."""
    from mistralrs.engine.builtin_models import resolve_builtin
    from mistralrs.engine.source import REPO_ID

    folder = os.path.expanduser(model_id)
    if os.path.isdir(folder):
        return _from_folder(model_id, folder)
    if resolve_builtin(model_id) is not None or model_id.endswith(".gguf") or os.path.isfile(folder):
        raise UserError(f"tune estimates safetensors checkpoints; {model_id} is a GGUF file, already quantized. "
                        "Pass the original model's folder or hub id to -m.")
    if not REPO_ID.match(model_id):
        raise ModelLoadError(f"-m {model_id}: no such folder, and it is not a Hugging Face repo id (`owner/name`).")
    return _from_hub(model_id, token)


def _from_folder(model_id: str, folder: str) -> ModelMetadata:
    from mistralrs.engine.weights import safetensors_files

    config = _read_config(os.path.join(folder, "config.json"))
    tensors = [t for path in safetensors_files(folder) for t in read_header(path)]
    return ModelMetadata(model_id, config, tuple(tensors))


def _read_config(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ModelLoadError(f"{path} does not exist: the folder is not a Hugging Face model folder.") from None
    except ValueError as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} should hold a JSON object.")
    return config


def read_header(path: str) -> list[TensorInfo]:
    """The tensors one safetensors file declares, from its JSON header alone."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise ModelLoadError(f"{path} does not start with a safetensors header ({exc}); download it again.") from None
    return _tensors(header)


def _tensors(header: dict) -> list[TensorInfo]:
    return [TensorInfo(name, entry["dtype"], tuple(entry["shape"]))
            for name, entry in header.items() if name != "__metadata__"]


def _from_hub(model_id: str, token: str | bool | None) -> ModelMetadata:
    from huggingface_hub import constants, get_safetensors_metadata, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        NotASafetensorsRepoError,
        RepositoryNotFoundError,
    )

    try:
        config = _read_config(hf_hub_download(model_id, "config.json", token=token))
        if constants.HF_HUB_OFFLINE:  # no range requests offline: the cached shards' headers will do
            return _from_cache(model_id, config, token)
        found = get_safetensors_metadata(model_id, token=token)
    except GatedRepoError:
        raise ModelLoadError(f"{model_id} is gated: accept its license on huggingface.co, then `mistralrs login`.") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"{model_id} was not found on the Hugging Face hub (or it is private).") from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"{model_id} is not in the Hugging Face cache and the hub cannot be reached; "
                             "pass a local folder to -m or go online.") from None
    except ModelLoadError:
        raise
    except NotASafetensorsRepoError:
        raise ModelLoadError(f"{model_id} has no safetensors weights on the hub; tune reads safetensors "
                             "headers (a GGUF repo is already quantized).") from None
    except Exception as exc:  # the hub client's HTTP and transport errors vary by version
        raise ModelLoadError(f"Reading {model_id}'s metadata from the hub failed ({type(exc).__name__}: {exc}).") from None
    tensors = [TensorInfo(name, info.dtype, tuple(info.shape))
               for file in found.files_metadata.values() for name, info in file.tensors.items()]
    return ModelMetadata(model_id, config, tuple(tensors))


def _from_cache(model_id: str, config: dict, token) -> ModelMetadata:
    from huggingface_hub import snapshot_download

    folder = snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors"], token=token)
    return ModelMetadata(model_id, config, tuple(_from_folder(model_id, folder).tensors))
