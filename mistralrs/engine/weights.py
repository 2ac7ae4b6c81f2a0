"""Filling a model's weight slots from safetensors files (or any name -> tensor source)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator

from mistralrs.backends.ops import Ops, Tensor
from mistralrs.errors import ModelLoadError
from mistralrs.models.base import Missing, Module

Progress = Callable[[int, int], None]  # (files or tensors done, total)


def safetensors_files(folder: str) -> list[str]:
    """The weight files of an HF folder: the index's shards, or the single model.safetensors."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"{index} is not a valid safetensors index ({exc}); re-download the model "
                "or remove the index if the folder has a single model.safetensors."
            ) from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.exists(os.path.join(folder, f))]
        if missing:
            raise ModelLoadError(
                f"{index} lists shard(s) that are not in {folder}: {', '.join(missing)}. "
                "The download is incomplete; download the model again."
            )
        return [os.path.join(folder, f) for f in files]
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(single):
        return [single]
    others = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if others:
        return [os.path.join(folder, f) for f in others]
    raise ModelLoadError(
        f"{folder} has no model.safetensors (nor a model.safetensors.index.json with shards). "
        "mistralrs reads safetensors checkpoints; for a GGUF file pass it with -f/--quantized-file, "
        "and convert .bin/.pth checkpoints to safetensors first."
    )


def read_safetensors(ops: Ops, files: list[str], dtype: str) -> Iterator[tuple[str, dict[str, Tensor]]]:
    for path in files:
        try:
            yield path, ops.load_safetensors(path, dtype)
        except ModelLoadError:
            raise
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ModelLoadError(
                f"{path} cannot be read as safetensors ({type(exc).__name__}: {exc}). "
                "The file is truncated or corrupt; download it again."
            ) from None


def load_into(
    model: Module,
    batches: Iterable[tuple[str, dict[str, Tensor]]],
    sanitize: Callable[[dict], dict] | None = None,
    progress: Progress | None = None,
    total: int = 0,
) -> list[str]:
    """Assign every checkpoint tensor to its slot, checking shapes; returns unexpected names.

    Raises ModelLoadError naming the file and tensor for a wrong shape, and listing
    the weights the checkpoint did not provide.
    """
    slots = {name: (owner, attr) for name, owner, attr in model.weight_slots()}
    unexpected: list[str] = []
    for done, (origin, weights) in enumerate(batches, start=1):
        if sanitize is not None:
            weights = sanitize(weights)
        for name, tensor in weights.items():
            slot = slots.get(name)
            if slot is None:
                unexpected.append(name)
                continue
            owner, attr = slot
            placeholder = getattr(owner, attr)
            expected = placeholder.shape if isinstance(placeholder, Missing) else tuple(placeholder.shape)
            if tuple(tensor.shape) != tuple(expected):
                raise ModelLoadError(
                    f"{origin}: tensor `{name}` has shape {tuple(tensor.shape)} but config.json implies "
                    f"{tuple(expected)}. The weights and config.json belong to different models; "
                    "use the config.json that came with these weights."
                )
            setattr(owner, attr, tensor)
        if progress is not None:
            progress(done, total)
    missing = [
        name
        for name, (owner, attr) in slots.items()
        if isinstance(getattr(owner, attr), Missing) and not getattr(owner, attr).optional
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelLoadError(
            f"The checkpoint lacks {len(missing)} weight(s) the model needs: {shown}. "
            "The download is incomplete, or config.json describes a different model "
            "(check `architectures` and the layer count, or pass -a/--arch)."
        )
    return unexpected
