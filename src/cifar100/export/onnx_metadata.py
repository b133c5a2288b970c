"""What an ONNX export carries besides its graph: the model's ModelInfo and its main facts in
the metadata_props (`metadata`), and the digest of the graph (`seal_onnx`), which the reader in
cifar100.runtime.model_files checks.

Light to import (export.formats and so the CLI's parser import it): onnx is imported to seal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from cifar100.fileio import atomic_path
from cifar100.runtime.model_files import DIGEST_KEY, INFO_KEY, graph_digest

if TYPE_CHECKING:
    from cifar100.runtime.trained_model import TrainedModel


def metadata(model: TrainedModel) -> dict[str, str]:
    """The ONNX metadata_props: the whole ModelInfo, and its main facts readable on their own.
    No test accuracy: the file is not measured yet (`cifar100 evaluate FILE` measures it, and
    `cifar100.load` reads that beside it), and its checkpoint's is not its (an int8 graph)."""
    info, rule = model.info, model.ood_rule
    facts = {
        "classes": json.dumps(info.classes),
        "image_size": str(info.image_size),
        "backbone": info.backbone,
        "preprocessing": info.preprocessing,
        "dataset": info.dataset,
        "source_run": info.run or str(model.source),
        "commit": info.commit or "",
        # What the graph computes its calibrated probabilities and verdicts with ("": none).
        "temperature": "" if info.temperature is None else repr(info.temperature),
        "ood_threshold": "" if rule is None else repr(rule.threshold),
    }
    return {INFO_KEY: json.dumps(info.to_json()), **facts}


def seal_onnx(path: Path) -> None:
    """Store the digest of the graph in the file's metadata (rewritten atomically)."""
    import onnx  # heavy: this module is read at every CLI start (see the docstring)

    model = onnx.load(str(path))
    _set_metadata(model, DIGEST_KEY, graph_digest(model))
    with atomic_path(path, "ONNX model", path.stat().st_size) as tmp:
        onnx.save(model, str(tmp))


def _set_metadata(model, key: str, value: str) -> None:
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    model.metadata_props.add(key=key, value=value)
