"""Keras layers' weights -> a torch module's state_dict: Keras names and layouts (HWIO kernels)
mapped to torch's, every shape checked, every tensor filled exactly once.

    state = read_keras_backbone(path, ResNet50V2(), names, "conv1_conv", "ResNet50V2")
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from cifar100.errors import ModelError
from cifar100.weights.keras_h5 import KerasLayer, open_keras_file, read_keras_layers

# Keras's own order of a layer's weights, used where a file stores them by position only.
KERAS_ORDER = {
    nn.Conv2d: ("kernel", "bias"),
    nn.Linear: ("kernel", "bias"),
    nn.BatchNorm1d: ("gamma", "beta", "moving_mean", "moving_variance"),
    nn.BatchNorm2d: ("gamma", "beta", "moving_mean", "moving_variance"),
}
TORCH_NAME = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def _keras_shape(kind: str, module: nn.Module, shape: torch.Size) -> tuple[int, ...]:
    if kind == "kernel" and isinstance(module, nn.Conv2d):
        out_ch, in_ch, kh, kw = shape
        return (kh, kw, in_ch, out_ch)  # HWIO
    if kind == "kernel":
        return tuple(reversed(shape))  # Dense: (in, out)
    return tuple(shape)


def _layer_state(module: nn.Module, layer: KerasLayer, path) -> dict[str, torch.Tensor]:
    """A torch module's tensors from one Keras layer, every shape checked against `module`."""
    kinds = KERAS_ORDER[type(module)]
    if isinstance(module, nn.Conv2d | nn.Linear) and module.bias is None:
        kinds = kinds[:1]
    stored = [name for name, _ in layer.weights]
    if len(stored) != len(kinds):
        raise ModelError(
            f"{path}: layer {layer.name!r} has {len(stored)} weights, expected {len(kinds)} "
            f"({', '.join(kinds)})"
        )
    if sorted(n for n in stored if n) == sorted(kinds):
        values = {name: value for name, value in layer.weights}
    else:  # unnamed (Keras 3) or oddly named: Keras's own order
        values = dict(zip(kinds, (value for _, value in layer.weights)))
    expected = module.state_dict()
    state: dict[str, torch.Tensor] = {}
    for kind, value in values.items():
        key = TORCH_NAME[kind]
        want = _keras_shape(kind, module, expected[key].shape)
        if tuple(value.shape) != want:
            raise ModelError(
                f"{path}: layer {layer.name!r}: {kind} has shape {tuple(value.shape)}, "
                f"expected {want}"
            )
        tensor = torch.from_numpy(np.array(value, dtype=np.float32))
        if kind == "kernel":
            tensor = tensor.permute(3, 2, 0, 1) if tensor.ndim == 4 else tensor.t()
        state[key] = tensor.contiguous()
    if "num_batches_tracked" in expected:  # torch-only counter; unused with a fixed momentum
        state["num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return state


def convert_layers(
    model: nn.Module, names: dict[str, str], layers: dict[str, KerasLayer], path
) -> dict[str, torch.Tensor]:
    """`model`'s state_dict from Keras layers; `names` maps module path -> Keras layer name.

    Strict: every tensor of `model` filled exactly once, and every layer in `names` present.
    """
    state: dict[str, torch.Tensor] = {}
    for module_path, keras_name in names.items():
        if keras_name not in layers:
            raise ModelError(f"{path}: layer {keras_name!r} is missing")
        module = model.get_submodule(module_path)
        for key, tensor in _layer_state(module, layers[keras_name], path).items():
            full = f"{module_path}.{key}"
            if full in state:
                raise ModelError(f"{path}: layer {keras_name!r} fills {full} a second time")
            state[full] = tensor
    unfilled = sorted(set(model.state_dict()) - set(state))
    if unfilled:
        raise ModelError(f"{path}: no Keras layer fills {unfilled[0]} ({len(unfilled)} unfilled)")
    return state


def check_unexpected(layers: dict[str, KerasLayer], used: set[str], path, what: str) -> None:
    """ModelError if `layers` holds a layer outside `used`: the file is not `what`."""
    extra = sorted(set(layers) - used)
    if extra:
        raise ModelError(
            f"{path}: not {what}: unexpected layer {extra[0]!r} ({len(extra)} unexpected)"
        )


def read_keras_backbone(
    path: str | os.PathLike, backbone: nn.Module, names: dict[str, str], first: str, what: str
) -> dict[str, torch.Tensor]:
    """`backbone`'s state_dict from a Keras weights file holding it without its top, as the
    whole model or nested in one; `names` maps module path -> Keras layer name, `first` is the
    name of its first layer (which finds it in the file), `what` names it in messages."""
    with open_keras_file(path) as (f, _):
        layers = read_keras_layers(f, path)
    if first not in layers:
        raise ModelError(f"{path}: no {what} weights in it: layer {first!r} is missing")
    # Only the model that holds the backbone must be exactly it: a ResNet101V2 file (the same
    # layers and more) fails here, while a nested backbone's surroundings are ignored.
    scope = layers[first].scope
    layers = {name: layer for name, layer in layers.items() if layer.scope == scope}
    state = convert_layers(backbone, names, layers, path)
    check_unexpected(layers, set(names.values()), path, f"a {what} without its top")
    return state
