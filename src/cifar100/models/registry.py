"""Backbones by name, and `build_model`, which turns a ModelConfig into a Classifier."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from cifar100.config import ModelConfig
from cifar100.errors import ModelError
from cifar100.models.head import Classifier
from cifar100.models.resnet_v2 import ResNet50V2


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the tool needs to know about one backbone."""

    name: str
    constructor: Callable[[], nn.Module]
    out_features: int
    native_size: int = 224  # the input side its ImageNet weights were trained at
    preprocessing: str = "tf"  # a Preprocess mode: tf | torch | none
    weight_sources: dict[str, str] = field(default_factory=dict)  # --weights value -> origin


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50v2": BackboneSpec(
        name="resnet50v2",
        constructor=ResNet50V2,
        out_features=ResNet50V2.out_features,
        native_size=224,
        preprocessing="tf",
        weight_sources={
            "imagenet": "Keras applications HDF5 "
            "(resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5)",
            "none": "random init",
        },
    ),
}


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered under `name`; ModelError naming the known ones otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise ModelError(f"unknown backbone {name!r}; known backbones: {known}") from None


def load_backbone_weights(
    backbone: nn.Module,
    spec: BackboneSpec,
    source: str,
    cache_dir: str | os.PathLike | None = None,
) -> None:
    """Load pretrained weights ("imagenet" or a file path) into `backbone`, in place."""
    # Imported here: cifar100.weights imports the models package, a cycle at import time.
    from cifar100.weights.keras import KERAS_LOADERS
    from cifar100.weights.sources import resolve_weights

    loader = KERAS_LOADERS.get(spec.name)
    if loader is None:
        raise ModelError(f"no pretrained weights can be read for {spec.name}; use --weights none")
    path = resolve_weights(spec.name, source, cache_dir)
    backbone.load_state_dict(loader(path), strict=True)


def build_model(
    cfg: ModelConfig, num_classes: int, cache_dir: str | os.PathLike | None = None
) -> Classifier:
    """A Classifier on the configured backbone, randomly initialised or with loaded weights."""
    spec = get_backbone(cfg.backbone)
    backbone = spec.constructor()
    if cfg.weights.lower() != "none":
        load_backbone_weights(backbone, spec, cfg.weights, cache_dir)
    model = Classifier(
        backbone,
        num_classes,
        preprocess=spec.preprocessing,
        resize=cfg.resize,
        head_units=cfg.head_units,
        dropout=cfg.dropout,
        activation=cfg.activation,
        leaky_slope=cfg.leaky_slope,
    )
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = round(1.0 - cfg.bn_momentum, 10)  # PyTorch counts the other way
    return model
