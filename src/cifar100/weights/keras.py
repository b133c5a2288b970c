"""Kept for keras_import.py, which imports `load_keras_report_model` from here.

Reading a whole report model builds a Classifier, which is the models layer's work (above
weights/): it lives in cifar100.models.keras_report; import it from there. The ResNet50V2
weights reader is cifar100.models.resnet_v2.load_keras_resnet50v2_h5, beside its backbone.
"""

from cifar100.models.keras_report import KerasReportModel, load_keras_report_model

__all__ = ["KerasReportModel", "load_keras_report_model"]
