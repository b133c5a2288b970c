"""`--format safetensors`: the model's weights, and in the header's metadata the ModelInfo JSON
that rebuilds it and a digest of the weights (as digest.content_digest computes it). No pickle
anywhere on this path; cifar100.runtime.model_files.read_safetensors reads it back.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from cifar100.digest import content_digest
from cifar100.export.job import ExportJob, ExportResult
from cifar100.fileio import atomic_path
from cifar100.runtime.model_files import DIGEST_KEY, INFO_KEY
from cifar100.runtime.model_info import ModelInfo


def write_safetensors_export(job: ExportJob) -> ExportResult:
    """The job's model as a safetensors export."""
    state = job.torch_module().state_dict()
    write_safetensors(job.model.info, state, job.out)
    return ExportResult(job.out, job.format, {"tensors": len(state)})


def write_safetensors(info: ModelInfo, weights: dict[str, torch.Tensor], out: Path) -> Path:
    """Write `weights` (a state_dict) with `info` to `out`, atomically."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    metadata = {INFO_KEY: json.dumps(info.to_json()), DIGEST_KEY: content_digest(tensors)}
    needed = sum(t.numel() * t.element_size() for t in tensors.values())
    with atomic_path(out, "safetensors export", needed) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out
