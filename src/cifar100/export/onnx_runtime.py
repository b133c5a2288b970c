"""ONNX exports read back: the ModelInfo in the graph's metadata, a digest of the graph that
must match, and an ONNX Runtime session behind a TrainedModel."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from cifar100.errors import CheckpointError
from cifar100.export.tensor_names import INPUT, LOGITS
from cifar100.fileio import atomic_path
from cifar100.runtime.model_info import ModelInfo

INFO_KEY = "cifar100.model"
DIGEST_KEY = "cifar100.sha256"  # of the serialised graph (weights included)


def _graph_digest(model) -> str:
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def seal_onnx(path: Path) -> None:
    """Store the digest of the graph in the file's metadata (rewritten atomically)."""
    import onnx

    model = onnx.load(str(path))
    _set_metadata(model, DIGEST_KEY, _graph_digest(model))
    with atomic_path(path, "ONNX model", path.stat().st_size) as tmp:
        onnx.save(model, str(tmp))


def _set_metadata(model, key: str, value: str) -> None:
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    model.metadata_props.add(key=key, value=value)


def read_onnx_info(path: Path):
    """(ModelInfo, the onnx ModelProto) of an ONNX export, its digest checked."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as e:  # DecodeError, truncation: not a readable ONNX file
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"{path}: damaged or not an ONNX file ({detail})") from None
    metadata = {p.key: p.value for p in model.metadata_props}
    if INFO_KEY not in metadata:
        raise CheckpointError(
            f"{path}: an ONNX file, but not a cifar100 export (no {INFO_KEY!r} metadata); "
            "export one with `cifar100 export RUN --format onnx`"
        )
    if metadata.get(DIGEST_KEY) != _graph_digest(model):
        raise CheckpointError(
            f"{path}: damaged: its graph does not match the digest stored when it was exported"
        )
    return ModelInfo.from_json(metadata[INFO_KEY], path), model


def load_onnx(path: Path):
    """A TrainedModel that runs the ONNX export at `path` with ONNX Runtime on the CPU."""
    import onnxruntime as ort

    from cifar100.runtime.trained_model import TrainedModel

    info, model = read_onnx_info(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as many as torch was given
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:
        raise CheckpointError(f"{path}: ONNX Runtime cannot run it ({str(e)[:200]})") from None

    def batches(batch: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run([LOGITS], {INPUT: batch.cpu().numpy()})
        return torch.from_numpy(logits)

    return TrainedModel(info, path, batches, torch.device("cpu"), runtime="onnx")
