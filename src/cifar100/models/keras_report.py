"""A whole trained Keras model of the report, read (with h5py, no TensorFlow) into a state_dict
for our Classifier, and the architecture it was saved with.

    imported = load_keras_report_model("model.h5")   # or model.keras
    model = build_model(imported.architecture.model_config(), imported.architecture.num_classes)
    model.load_state_dict(imported.state_dict)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from cifar100.errors import ModelError
from cifar100.models.registry import build_model
from cifar100.weights.keras_h5 import open_keras_file, read_keras_layers
from cifar100.weights.keras_report_config import ReportArchitecture, parse_report_config
from cifar100.weights.keras_to_torch import check_unexpected, convert_layers


@dataclass(frozen=True)
class KerasReportModel:
    """A trained Keras model of the report: a Classifier state_dict and its architecture."""

    state_dict: dict[str, torch.Tensor]
    architecture: ReportArchitecture


def load_keras_report_model(path: str | os.PathLike) -> KerasReportModel:
    """Read a whole Keras model of the report (saved as .h5 or .keras) for our Classifier."""
    with open_keras_file(path) as (f, config):
        if config is None:
            raise ModelError(
                f"{path}: holds weights only, no model config; save the whole model with "
                "model.save('model.h5') or model.save('model.keras')"
            )
        arch = parse_report_config(config, path)
        layers = read_keras_layers(f, path)
    model = build_model(arch.model_config(), arch.num_classes)
    names = {f"backbone.{p}": k for p, k in model.backbone.keras_layer_names().items()}
    names |= arch.head_layers
    state = convert_layers(model, names, layers, path)
    used = set(names.values()) | set(arch.other_layers)
    check_unexpected(layers, used, path, "the report's model")
    return KerasReportModel(state, arch)
