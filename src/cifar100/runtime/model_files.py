"""Exported model files read back for inference: an ONNX export run by ONNX Runtime, a
safetensors export rebuilt in PyTorch. Each holds the model's ModelInfo JSON under INFO_KEY and
a digest under DIGEST_KEY, both checked here; export/ writes them.

    READERS[".onnx"](path)         # ModelFile(info, batches=an ONNX Runtime session, CPU)
    READERS[".safetensors"](path)  # ModelFile(info, weights=a state_dict)

`cifar100.load` reads a file through the reader registered for its suffix (anything else is a
checkpoint). An export format with a reader registers it here: register_reader, which
cifar100.export.formats.register_format calls for it.

Light to import: the CLI's parser reads the export formats, and so this module, at every
start; torch, onnx, onnxruntime, safetensors and ModelInfo (which brings torch) are imported
when a file is read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cifar100.errors import CheckpointError
from cifar100.runtime.tensor_names import INPUT, LOGITS

if TYPE_CHECKING:
    import torch

    from cifar100.runtime.model_info import ModelInfo

INFO_KEY = "cifar100.model"  # the ModelInfo JSON: ONNX metadata_props, safetensors' header
DIGEST_KEY = "cifar100.sha256"  # ONNX: of the serialised graph; safetensors: of the tensors


@dataclass(frozen=True)
class ModelFile:
    """What a reader found: the model's ModelInfo, and either its PyTorch weights (which
    `load` rebuilds the model with) or `batches`, a runner of its own on the CPU (uint8 NHWC
    batch -> float32 logits), named by `runtime`."""

    info: ModelInfo
    weights: dict[str, torch.Tensor] | None = None
    batches: Callable[[torch.Tensor], torch.Tensor] | None = None
    runtime: str = "torch"


Reader = Callable[[Path], ModelFile]
READERS: dict[str, Reader] = {}  # file suffix (lower case) -> its reader


def register_reader(suffix: str, reader: Reader) -> Reader:
    """Make `cifar100.load` read files ending in `suffix` with `reader`."""
    suffix = suffix.lower()
    if READERS.setdefault(suffix, reader) is not reader:
        raise ValueError(f"another reader is registered for {suffix!r} files")
    return reader


def _model_info(text: str, path: Path) -> ModelInfo:
    # Imported here: model_info brings torch, and this module is read at every CLI start.
    from cifar100.runtime.model_info import ModelInfo

    info = ModelInfo.from_json(text, path)
    info.read_measured(path)  # this file's own accuracy, not its checkpoint's
    return info


def graph_digest(model) -> str:
    """The digest an ONNX export is sealed with: of its serialised graph, weights included."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def read_onnx_info(path: Path):
    """(ModelInfo, the onnx ModelProto) of an ONNX export, its digest checked."""
    import onnx  # heavy: imported when a file is read (see the module's docstring)

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
    if metadata.get(DIGEST_KEY) != graph_digest(model):
        raise CheckpointError(
            f"{path}: damaged: its graph does not match the digest stored when it was exported"
        )
    return _model_info(metadata[INFO_KEY], path), model


def read_onnx(path: Path) -> ModelFile:
    """An ONNX export with an ONNX Runtime session on the CPU that runs it."""
    # Heavy: imported when a file is read (see the module's docstring).
    import onnxruntime as ort
    import torch

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

    return ModelFile(info, batches=batches, runtime="onnx")


def read_safetensors(path: Path) -> ModelFile:
    """The ModelInfo and weights of a safetensors export, checked against their digest."""
    # Heavy: imported when a file is read (see the module's docstring).
    from safetensors import safe_open
    from safetensors.torch import load_file

    from cifar100.digest import content_digest

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
    return ModelFile(_model_info(metadata[INFO_KEY], path), weights=tensors)


register_reader(".onnx", read_onnx)
register_reader(".safetensors", read_safetensors)
