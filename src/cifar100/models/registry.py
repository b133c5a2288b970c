"""The backbone registry, and `build_model`, which turns a ModelConfig into a Classifier.

Each backbone is one module that registers itself: its builder, weight sources and loader,
preprocessing and native size, in one BackboneSpec (timm's `register_model` + `default_cfgs`,
fastai's `model_meta`):

    register_backbone(BackboneSpec("resnet50v2", ResNet50V2, 2048, load_weights=...))
    register_backbone_family("timm:", timm_spec, hint="timm:<model name>")  # specs made per name

cifar100/models/__init__.py imports every backbone module, so any import of cifar100.models
(this module included) finds them all. Registered: resnet50v2 (resnet_v2.py),
efficientnet_lite0/1/2 (efficientnet_lite.py), and any `timm:<model name>` (timm_adapter.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from cifar100.config import ModelConfig
from cifar100.errors import ModelError
from cifar100.models.head import Classifier
from cifar100.models.summary import keras_param_count

# (backbone module, --weights value: "imagenet" or a file path, cache dir) -> None; in place.
WeightLoader = Callable[[nn.Module, str, "str | os.PathLike | None"], None]


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the tool needs to know about one backbone."""

    name: str
    constructor: Callable[[], nn.Module]
    out_features: int
    native_size: int = 224  # the input side its ImageNet weights were trained at
    preprocessing: str = "tf"  # a Preprocess mode: tf | torch | none | raw | lite
    weight_sources: dict[str, str] = field(default_factory=dict)  # --weights value -> origin
    load_weights: WeightLoader | None = None  # None: no pretrained weights can be read
    # Where the "imagenet" weights stand on this machine (e.g. " (installed)"), appended to
    # their source by `cifar100 backbones`; None: nothing to say.
    weights_status: Callable[[], str] | None = None


@dataclass(frozen=True)
class BackboneFamily:
    """Backbones named by a prefix, their specs made on demand (`timm:<any timm model>`)."""

    prefix: str
    spec: Callable[[str], BackboneSpec]  # the whole name, prefix included -> its spec
    hint: str  # how a name is spelled, for messages: "timm:<model name>"


BACKBONES: dict[str, BackboneSpec] = {}
FAMILIES: dict[str, BackboneFamily] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Make `spec` known by its name (to --backbone, `cifar100 backbones`, every loader)."""
    if spec.name in BACKBONES or _family(spec.name) is not None:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    BACKBONES[spec.name] = spec
    return spec


def register_backbone_family(
    prefix: str, spec: Callable[[str], BackboneSpec], hint: str
) -> BackboneFamily:
    """Make every name starting with `prefix` a backbone, its spec made by `spec(name)`."""
    if prefix in FAMILIES:
        raise ValueError(f"backbone family {prefix!r} is registered twice")
    FAMILIES[prefix] = family = BackboneFamily(prefix, spec, hint)
    return family


def _family(name: str) -> BackboneFamily | None:
    return next((f for f in FAMILIES.values() if name.startswith(f.prefix)), None)


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered under `name` (or made by its family); ModelError if unknown."""
    family = _family(name)
    if family is not None:
        return family.spec(name)
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        families = "".join(f", or {f.hint}" for f in FAMILIES.values())
        raise ModelError(f"unknown backbone {name!r}; known backbones: {known}{families}") from None


def describe_backbones() -> list[dict]:
    """One dict per registered backbone: name, weights, native size, preprocessing, counts."""
    rows = []
    for spec in BACKBONES.values():
        backbone = spec.constructor()
        total, trainable = keras_param_count(backbone)
        weights = dict(spec.weight_sources)
        if spec.weights_status is not None:
            weights["imagenet"] += spec.weights_status()
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
    if spec.load_weights is None:
        raise ModelError(f"no pretrained weights can be read for {spec.name}; use --weights none")
    spec.load_weights(backbone, source, cache_dir)


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
