"""Kept for serve/v2.py, which imports the tensor names from here: they live in
cifar100.runtime.tensor_names (the ONNX reader in runtime/ needs them); import them from there."""

from cifar100.runtime.tensor_names import INPUT, LOGITS, OUTPUTS, PROBABILITIES

__all__ = ["INPUT", "LOGITS", "OUTPUTS", "PROBABILITIES"]
