"""Pretrained weights: where they come from (sources) and Keras HDF5 -> PyTorch (keras)."""

from cifar100.weights.keras import (
    KerasReportModel,
    load_keras_report_model,
    load_keras_resnet50v2_h5,
)
from cifar100.weights.keras_report_config import ReportArchitecture
from cifar100.weights.sources import MIRROR_ENV, PUBLISHED, WeightFile, resolve_weights

__all__ = [
    "MIRROR_ENV",
    "PUBLISHED",
    "KerasReportModel",
    "ReportArchitecture",
    "WeightFile",
    "load_keras_report_model",
    "load_keras_resnet50v2_h5",
    "resolve_weights",
]
