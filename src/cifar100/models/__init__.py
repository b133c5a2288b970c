"""Models: the backbones (one module each, registering itself), the report's classifier head,
the registry that finds them.

Importing this package imports every backbone module below, each of which registers its
backbone(s) with cifar100.models.registry: a new backbone is a new module and one line here.
"""

# The backbone modules, in the order `cifar100 backbones` lists them: each registers itself.
# isort: off
from cifar100.models import resnet_v2  # noqa: F401
from cifar100.models import efficientnet_lite  # noqa: F401
from cifar100.models import timm_adapter  # noqa: F401

# isort: on
from cifar100.models.head import Classifier, Preprocess, Upsample, make_head
from cifar100.models.registry import (
    BACKBONES,
    BackboneSpec,
    build_model,
    get_backbone,
    load_backbone_weights,
    register_backbone,
    register_backbone_family,
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
    "register_backbone",
    "register_backbone_family",
    "summary_rows",
]
