"""Keras weight files -> PyTorch state_dicts, read with h5py alone (TensorFlow never imported).

backbone.load_state_dict(load_keras_resnet50v2_h5("resnet50v2_..._notop.h5"))
imported = load_keras_report_model("model.h5")   # a whole trained Keras model of the report

Reading the files: keras_h5.py; names and layouts: keras_to_torch.py; the report model's
saved config: keras_report_config.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from cifar100.errors import ModelError
from cifar100.models.resnet_v2 import ResNet50V2
from cifar100.weights.keras_h5 import KerasLayer, open_keras_file, read_keras_layers
from cifar100.weights.keras_report_config import ReportArchitecture, parse_report_config
from cifar100.weights.keras_to_torch import convert_layers


def _unexpected(layers: dict[str, KerasLayer], used: set[str], path, what: str) -> None:
    extra = sorted(set(layers) - used)
    if extra:
        raise ModelError(
            f"{path}: not {what}: unexpected layer {extra[0]!r} ({len(extra)} unexpected)"
        )


def _backbone_names(prefix: str = "") -> tuple[nn.Module, dict[str, str]]:
    # A real (CPU) template for shapes: building one costs 0.2 s, while the meta device's
    # first use in a process costs over a second.
    backbone = ResNet50V2()
    return backbone, {prefix + p: k for p, k in backbone.keras_layer_names().items()}


def load_keras_resnet50v2_h5(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A `ResNet50V2` state_dict from Keras weights (the no-top ImageNet file, or any model
    whose backbone, top-level or nested, is Keras's ResNet50V2)."""
    with open_keras_file(path) as (f, _):
        layers = read_keras_layers(f, path)
    if "conv1_conv" not in layers:
        raise ModelError(f"{path}: no ResNet50V2 weights in it: layer 'conv1_conv' is missing")
    # Only the model that holds the backbone must be exactly it: a ResNet101V2 file (the same
    # layers and more) fails here, while a nested backbone's surroundings are ignored.
    scope = layers["conv1_conv"].scope
    layers = {name: layer for name, layer in layers.items() if layer.scope == scope}
    backbone, names = _backbone_names()
    state = convert_layers(backbone, names, layers, path)
    _unexpected(layers, set(names.values()), path, "a ResNet50V2 without its top")
    return state


# Backbone name -> its Keras weights reader (models.registry.load_backbone_weights uses it).
KERAS_LOADERS = {"resnet50v2": load_keras_resnet50v2_h5}


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
    from cifar100.models.registry import build_model  # registry imports weights lazily too

    _, names = _backbone_names("backbone.")
    names |= arch.head_layers
    model = build_model(arch.model_config(), arch.num_classes)
    state = convert_layers(model, names, layers, path)
    _unexpected(layers, set(names.values()), path, "the report's model")
    return KerasReportModel(state, arch)
