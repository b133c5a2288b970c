"""Kept for serve/server.py, bench.py and benchmarks/onnx_speed.py, which import from here.

Reading an ONNX export back is the runtime's work: `cifar100.load(path)` (through
cifar100.runtime.model_files.read_onnx); sealing one is export/onnx_metadata.py's `seal_onnx`.
Import them from there.
"""

from __future__ import annotations

from pathlib import Path

from cifar100.export.onnx_metadata import seal_onnx
from cifar100.runtime.trained_model import TrainedModel, load

__all__ = ["load_onnx", "seal_onnx"]


def load_onnx(path: Path) -> TrainedModel:
    """An ONNX export run by ONNX Runtime on the CPU: what `cifar100.load(path)` gives."""
    return load(path)
