"""A model as safetensors: its weights, and in the header's metadata the ModelInfo JSON that
rebuilds it and a digest of the weights. No pickle anywhere on this path."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cifar100.digest import content_digest
from cifar100.errors import CheckpointError
from cifar100.fileio import atomic_path
from cifar100.runtime.model_info import ModelInfo

INFO_KEY = "cifar100.model"
DIGEST_KEY = "cifar100.sha256"  # of the tensors, as digest.content_digest computes it


def write_safetensors(info: ModelInfo, weights: dict[str, torch.Tensor], out: Path) -> Path:
    """Write `weights` (a state_dict) with `info` to `out`, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    metadata = {INFO_KEY: json.dumps(info.to_json()), DIGEST_KEY: content_digest(tensors)}
    needed = sum(t.numel() * t.element_size() for t in tensors.values())
    with atomic_path(out, "safetensors export", needed) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out


def read_safetensors(path: Path) -> tuple[ModelInfo, dict[str, torch.Tensor]]:
    """The ModelInfo and weights of a safetensors export, checked against their digest."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # a truncated or foreign file: the library's many errors alike
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"{path}: damaged or not a safetensors file ({detail})") from None
    if INFO_KEY not in metadata:
        raise CheckpointError(
            f"{path}: a safetensors file, but not a cifar100 export (no {INFO_KEY!r} metadata); "
            "export one with `cifar100 export RUN --format safetensors`"
        )
    if metadata.get(DIGEST_KEY) != content_digest(tensors):
        raise CheckpointError(
            f"{path}: damaged: its weights do not match the digest stored when it was written"
        )
    return ModelInfo.from_json(metadata[INFO_KEY], path), tensors
