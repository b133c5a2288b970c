"""What `export_model` hands a format's writer (an ExportJob) and takes back (an ExportResult).

    def write_toy(job: ExportJob) -> ExportResult:
        torch.save(job.torch_module().state_dict(), job.out)
        return ExportResult(job.out, job.format, {})

Light to import (the formats that use it are read at every CLI start): no torch, no numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cifar100.errors import ModelError

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from cifar100.runtime.trained_model import TrainedModel

CHECK_IMAGES = 256  # real images ONNX Runtime is compared with PyTorch on
CALIBRATION_IMAGES = 512  # training images int8 quantisation is calibrated on


@dataclass(frozen=True)
class ExportJob:
    """One export: the model, the format's name, where to write, and the options."""

    model: TrainedModel
    format: str
    out: Path  # checked writable (and, for a file, absent or --force) by export_model
    force: bool = False
    quantize: str | None = None  # "int8", for a format registered with quantizes=True
    name: str = "cifar100"  # the model's name in a Triton repository
    # (training images, test images), uint8 (N, size, size, 3), for int8 calibration and for
    # checking an ONNX graph against PyTorch; None: random test images, no calibration.
    images: tuple[np.ndarray, np.ndarray] | None = None
    max_batch: int = 64  # the largest batch a Triton model takes

    def torch_module(self) -> nn.Module:
        """The model's PyTorch module; ModelError for an ONNX export, which has none."""
        if self.model.module is None:
            raise ModelError(
                f"{self.model.source}: an ONNX export holds no PyTorch weights to write as "
                f"{self.format}; export from its run directory, checkpoint or safetensors file"
            )
        return self.model.module


@dataclass
class ExportResult:
    path: Path
    format: str
    details: dict  # what the exporter checked or measured (e.g. max |difference|)
    note: str = ""  # something the user should know (e.g. no real images to check on)
