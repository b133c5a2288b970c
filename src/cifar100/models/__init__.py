"""Models: the Keras-equal ResNet50V2 backbone, the report's classifier head, a registry."""

from cifar100.models.head import Classifier, Preprocess, Upsample, make_head
from cifar100.models.registry import (
    BACKBONES,
    BackboneSpec,
    build_model,
    get_backbone,
    load_backbone_weights,
)
from cifar100.models.resnet_v2 import ResNet50V2
from cifar100.models.summary import SummaryRow, format_summary, keras_param_count, summary_rows

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "Classifier",
    "Preprocess",
    "ResNet50V2",
    "SummaryRow",
    "Upsample",
    "build_model",
    "format_summary",
    "get_backbone",
    "keras_param_count",
    "load_backbone_weights",
    "make_head",
    "summary_rows",
]
