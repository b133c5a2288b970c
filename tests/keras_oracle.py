"""Test helpers for Keras weight files: writers in Keras's legacy HDF5 layout, and Keras itself
(TensorFlow) as the oracle our models must agree with.

The h5py writers need no TensorFlow; functions taking or building Keras models import keras on
use, so callers skip first where TensorFlow is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Set before keras is first imported: the TF backend, and quiet C++ logging.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Torch tensor name -> Keras weight name, per module kind, in Keras's order.
KERAS_WEIGHTS = {
    "conv": (("weight", "kernel"), ("bias", "bias")),
    "bn": (
        ("weight", "gamma"),
        ("bias", "beta"),
        ("running_mean", "moving_mean"),
        ("running_var", "moving_variance"),
    ),
}

# A layout stored by Keras 2's `model.save_weights("w.h5")` (so the canonical ImageNet file):
# {layer name: [(weight name, value or, for an unallocated all-zero dataset, a shape)]}.
LegacyLayers = dict[str, list[tuple[str, "np.ndarray | tuple[int, ...]"]]]


def write_legacy_h5(path: str | os.PathLike, layers: LegacyLayers, order: list[str]) -> Path:
    """Write `layers` as Keras 2 `save_weights` does; `order` lists every layer, weightless too.

    Root attrs layer_names/backend/keras_version; one group per layer with attr weight_names
    ("conv1_conv/kernel:0", ...) and each weight stored at group[weight name].
    """
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in order])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for name in order:
            group = f.create_group(name)
            weights = layers.get(name, [])
            # Keras stores an empty list as an empty float array, as here.
            group.attrs["weight_names"] = np.array([w.encode() for w, _ in weights])
            for weight_name, value in weights:
                if isinstance(value, tuple):  # shape only: h5py allocates nothing, reads zeros
                    group.create_dataset(weight_name, shape=value, dtype="float32")
                else:
                    group.create_dataset(weight_name, data=value)
    return Path(path)


def write_keras3_weights_h5(path: str | os.PathLike, layers: LegacyLayers, names=True) -> Path:
    """Write `layers` as Keras 3 `save_weights("x.weights.h5")` does, for a flat model.

    layers/<key>/vars/<i> by position, the key made from the class ("conv2d_3") and the layer's
    own name in the vars attrs; older Keras 3 versions (`names=False`) stored no name.
    """
    import h5py

    with h5py.File(path, "w") as f:
        for i, (name, weights) in enumerate(layers.items()):
            group = f.create_group(f"layers/layer_{i}/vars")
            if names:
                group.attrs["name"] = name
            for j, (_, value) in enumerate(weights):
                group.create_dataset(str(j), data=value)
    return Path(path)


def torch_to_keras_layers(model: nn.Module, names: dict[str, str], shapes_only=False):
    """The inverse of our converter: Keras-layout arrays (HWIO, (in, out)) from torch modules."""
    layers: LegacyLayers = {}
    for module_path, keras_name in names.items():
        module = model.get_submodule(module_path)
        kind = "bn" if isinstance(module, nn.modules.batchnorm._BatchNorm) else "conv"
        weights = []
        for torch_name, keras_weight in KERAS_WEIGHTS[kind]:
            tensor = getattr(module, torch_name)
            if tensor is None:
                continue
            value = tensor.detach().cpu().numpy()
            if keras_weight == "kernel":
                value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
            value = np.ascontiguousarray(value, dtype=np.float32)
            weights.append(
                (f"{keras_name}/{keras_weight}:0", value.shape if shapes_only else value)
            )
        layers[keras_name] = weights
    return layers


def randomize_torch(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values everywhere, batch-norm running statistics included (variance > 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model


# --- Keras (TensorFlow) ------------------------------------------------------------------------


def keras_backbone(keras=None, input_shape=(None, None, 3)):
    """keras.applications.ResNet50V2 without its top, no weights downloaded.

    `keras`: the module to build with: keras (3) by default, or tf_keras (Keras 2).
    """
    if keras is None:
        import keras

    return keras.applications.ResNet50V2(include_top=False, weights=None, input_shape=input_shape)


def randomize_keras(model, seed: int = 0, scale: float = 1.0) -> None:
    """Random values for every weight, BN moving mean and (positive) variance included.

    Kernels ~ N(0, (scale^2)/fan_in): with scale 1 activations stay O(1) through 50 layers, so
    an absolute tolerance means the same at every depth.
    """
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        # Keras 3: v.path "conv1_conv/kernel"; Keras 2: v.name "conv1_conv/kernel:0".
        kind = getattr(v, "path", v.name).rsplit("/", 1)[-1].split(":")[0]
        if kind == "kernel":
            value = rng.normal(0.0, scale / np.prod(shape[:-1]) ** 0.5, shape)
        elif kind == "gamma":
            value = rng.uniform(0.5, 1.5, shape)
        elif kind == "moving_variance":
            value = rng.uniform(0.5, 2.0, shape)
        else:  # bias, beta, moving_mean
            value = rng.normal(0.0, 0.2, shape)
        v.assign(value.astype(np.float32))


def keras_legacy_layers(model) -> tuple[LegacyLayers, list[str]]:
    """A Keras model's weights as Keras 2 `save_weights` names them: 'conv1_conv/kernel:0'."""
    layers: LegacyLayers = {}
    for layer in model.layers:
        weights = list(layer.trainable_weights) + list(layer.non_trainable_weights)
        if weights:
            layers[layer.name] = [
                (f"{layer.name}/{w.name}:0", np.asarray(w.numpy(), dtype=np.float32))
                for w in weights
            ]
    return layers, [layer.name for layer in model.layers]


def report_model(
    backbone, num_classes: int = 100, leaky: float | None = None, sequential=False, keras=None
):
    """The report's model around `backbone`: Input 32x32x3 -> UpSampling2D(7, bilinear) ->
    backbone -> GAP -> Dropout(0.25) -> Dense(256, relu) -> BatchNorm -> Dense(softmax).

    `leaky`: Dense(256) + LeakyReLU(leaky) instead; `sequential`: a Sequential model, its
    output Dense linear and followed by a Softmax layer; `keras`: as for keras_backbone.
    """
    if keras is None:
        import keras
    layers = keras.layers

    hidden = [layers.Dense(256, activation="relu")]
    if leaky is not None:
        # Positional: the slope is negative_slope in Keras 3, alpha in Keras 2.
        hidden = [layers.Dense(256), layers.LeakyReLU(leaky)]
    if sequential:
        output = [layers.Dense(num_classes), layers.Softmax()]
    else:
        output = [layers.Dense(num_classes, activation="softmax")]
    stack = [
        layers.UpSampling2D((7, 7), interpolation="bilinear"),
        backbone,
        layers.GlobalAveragePooling2D(),
        layers.Dropout(0.25),
        *hidden,
        layers.BatchNormalization(),
        *output,
    ]
    if sequential:
        return keras.Sequential([keras.Input((32, 32, 3)), *stack])
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for layer in stack:
        x = layer(x)
    return keras.Model(inputs, x)


def keras_predict(model, nhwc: np.ndarray) -> np.ndarray:
    """The model's output in inference mode (BN moving statistics, no dropout)."""
    return np.asarray(model(nhwc, training=False))
