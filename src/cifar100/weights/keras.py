"""Keras weight files -> PyTorch state_dicts, read with h5py alone (TensorFlow never imported).

backbone.load_state_dict(load_keras_resnet50v2_h5("resnet50v2_..._notop.h5"))
imported = load_keras_report_model("model.h5")   # a whole trained Keras model of the report

Layouts: legacy HDF5 (Keras 2 `save_weights`/`save`, Keras 3 `save("m.h5")`: attrs
`layer_names`, per-layer `weight_names`), Keras 3 `.weights.h5` (`layers/<key>/vars/<i>`, the
layer's name in the vars attrs) and `.keras` archives (a zip holding such a model.weights.h5).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifar100.errors import ModelError
from cifar100.models.head import Classifier
from cifar100.models.resnet_v2 import ResNet50V2

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


@dataclass
class KerasLayer:
    """One Keras layer's stored weights, in file order; a name is None where only order is known."""

    name: str
    scope: str  # the nested model that holds it; "" at the top level
    weights: list[tuple[str | None, np.ndarray]]


# --- reading -------------------------------------------------------------------------------------


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ModelError("reading Keras weight files needs h5py: pip install h5py") from None
    return h5py


@contextlib.contextmanager
def open_keras_file(path: str | os.PathLike) -> Iterator[tuple[Any, dict | None]]:
    """(the weights HDF5 file, the model config or None for a weights-only file)."""
    h5py = _h5py()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        # A .keras archive: config.json beside the weights in the Keras 3 layout.
        try:
            with zipfile.ZipFile(path) as z:
                config = json.loads(z.read("config.json"))
                data = z.read("model.weights.h5")
        except (KeyError, ValueError, zipfile.BadZipFile) as e:
            raise ModelError(f"{path}: a zip file but not a Keras .keras archive ({e})") from None
        with h5py.File(io.BytesIO(data), "r") as f:
            yield f, config
        return
    if not h5py.is_hdf5(path):
        raise ModelError(f"{path}: not an HDF5 file (nor a .keras archive); expected Keras weights")
    with h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
        config = json.loads(_text(raw)) if raw is not None else None
        yield f, config


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes | np.bytes_) else str(value)


def _attr_list(group: Any, name: str) -> list[str] | None:
    """A string-list attribute; Keras splits long ones into name0, name1, ... (64 KiB limit)."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    elif f"{name}0" in group.attrs:
        chunks = []
        while f"{name}{len(chunks)}" in group.attrs:
            chunks.append(group.attrs[f"{name}{len(chunks)}"])
    else:
        return None
    return [_text(v) for chunk in chunks for v in np.atleast_1d(np.asarray(chunk)).tolist()]


def read_keras_layers(f: Any, path: str | os.PathLike) -> dict[str, KerasLayer]:
    """Every layer with weights in an open Keras HDF5 file, by layer name, nesting flattened."""
    layers: dict[str, KerasLayer] = {}
    if "model_weights" in f:  # a whole model saved with model.save("m.h5")
        _read_legacy(f["model_weights"], layers, path)
    elif _attr_list(f, "layer_names") is not None:  # model.save_weights("w.h5") (Keras 2)
        _read_legacy(f, layers, path)
    elif "layers" in f:  # Keras 3 .weights.h5, also inside .keras archives
        _read_keras3(f, "", layers, path)
    else:
        raise ModelError(f"{path}: an HDF5 file but not Keras weights (no layer_names or layers)")
    return layers


def _add(layers: dict[str, KerasLayer], layer: KerasLayer, path: str | os.PathLike) -> None:
    if layer.name in layers:
        raise ModelError(f"{path}: layer {layer.name!r} is stored twice")
    layers[layer.name] = layer


def _read_legacy(root: Any, layers: dict[str, KerasLayer], path: str | os.PathLike) -> None:
    for group_name in _attr_list(root, "layer_names") or []:
        if group_name not in root:
            raise ModelError(f"{path}: layer {group_name!r} is listed but not stored")
        group = root[group_name]
        names = _attr_list(group, "weight_names") or []
        # A nested model (e.g. the backbone inside the report's model) keeps all its layers'
        # weights in one group, as "<layer>/<weight>[:0]"; a plain layer's all share one owner.
        owners = {n.split("/")[-2] if "/" in n else group_name for n in names}
        nested = len(owners) > 1
        found: dict[str, KerasLayer] = {}
        for name in names:
            parts = name.split("/")
            owner = parts[-2] if nested else group_name
            layer = found.setdefault(owner, KerasLayer(owner, group_name if nested else "", []))
            if name not in group:
                raise ModelError(f"{path}: layer {owner!r}: weight {name!r} is listed but absent")
            layer.weights.append((parts[-1].split(":")[0], np.asarray(group[name])))
        for layer in found.values():
            _add(layers, layer, path)


def _read_keras3(group: Any, scope: str, layers: dict[str, KerasLayer], path) -> None:
    for key in group["layers"]:
        child = group["layers"][key]
        variables = child.get("vars")
        has_name = variables is not None and "name" in variables.attrs
        name = _text(variables.attrs["name"]) if has_name else None
        if variables is not None and len(variables):
            if name is None:
                # Older Keras 3 versions key layers by class ("conv2d_7") and store no names.
                raise ModelError(
                    f"{path}: layer group {child.name!r} carries no layer name (an older Keras 3 "
                    "file); re-save the model with model.save('model.h5')"
                )
            values = [(None, np.asarray(variables[str(i)])) for i in range(len(variables))]
            _add(layers, KerasLayer(name, scope, values), path)
        if "layers" in child:
            _read_keras3(child, name or key, layers, path)


# --- converting ----------------------------------------------------------------------------------


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


def _unexpected(layers: dict[str, KerasLayer], used: set[str], path, what: str) -> None:
    extra = sorted(set(layers) - used)
    if extra:
        raise ModelError(
            f"{path}: not {what}: unexpected layer {extra[0]!r} ({len(extra)} unexpected)"
        )


def _backbone_names(prefix: str = "") -> tuple[nn.Module, dict[str, str]]:
    # A real (CPU) template for shapes: building one costs 0.2 s, while the meta device's
    # first use in a process costs over a second.
    backbone = ResNet50V2()
    return backbone, {prefix + p: k for p, k in backbone.keras_layer_names().items()}


def load_keras_resnet50v2_h5(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A `ResNet50V2` state_dict from Keras weights (the no-top ImageNet file, or any model
    whose backbone, top-level or nested, is Keras's ResNet50V2)."""
    with open_keras_file(path) as (f, _):
        layers = read_keras_layers(f, path)
    if "conv1_conv" not in layers:
        raise ModelError(f"{path}: no ResNet50V2 weights in it: layer 'conv1_conv' is missing")
    # Only the model that holds the backbone must be exactly it: a ResNet101V2 file (the same
    # layers and more) fails here, while a nested backbone's surroundings are ignored.
    scope = layers["conv1_conv"].scope
    layers = {name: layer for name, layer in layers.items() if layer.scope == scope}
    backbone, names = _backbone_names()
    state = convert_layers(backbone, names, layers, path)
    _unexpected(layers, set(names.values()), path, "a ResNet50V2 without its top")
    return state


# Backbone name -> its Keras weights reader (models.registry.load_backbone_weights uses it).
KERAS_LOADERS = {"resnet50v2": load_keras_resnet50v2_h5}


# --- the report's whole model --------------------------------------------------------------------


@dataclass(frozen=True)
class ReportArchitecture:
    """The settings of a Keras model of the report's architecture, in our Classifier's terms."""

    num_classes: int
    head_units: int
    dropout: float
    activation: str  # relu | leaky_relu (the hidden dense layer's)
    leaky_slope: float
    resize: int  # the UpSampling2D factor; 1 without one
    # "tf": the Keras model expects x/127.5 - 1, fed so by the caller (Keras's
    # resnet_v2.preprocess_input) or by its own Rescaling layer; our Classifier takes raw pixels.
    preprocess: str
    output_activation: str  # softmax | linear: what the Keras model's last layer returned
    bn_momentum: float  # the head batch norm's, Keras's convention (as ModelConfig.bn_momentum)
    input_size: int | None  # side of the Keras model's square input, None where not fixed
    head_layers: dict[str, str]  # our head module path -> Keras layer name

    def classifier_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for Classifier(backbone, num_classes, **these)."""
        return dict(
            preprocess=self.preprocess,
            resize=self.resize,
            head_units=self.head_units,
            dropout=self.dropout,
            activation=self.activation,
            leaky_slope=self.leaky_slope,
        )


@dataclass(frozen=True)
class KerasReportModel:
    """A trained Keras model of the report: a Classifier state_dict and its architecture."""

    state_dict: dict[str, torch.Tensor]
    architecture: ReportArchitecture


BACKBONE_CLASSES = ("Functional", "Model", "Sequential")


class _LayerQueue:
    """The top-level layers of a Keras model config, (class name, config), consumed in order."""

    def __init__(self, layers: list[dict], path) -> None:
        self.layers = [(layer.get("class_name", "?"), layer.get("config", {})) for layer in layers]
        self.path = path
        self.i = 0

    def peek(self) -> tuple[str, dict]:
        return self.layers[self.i] if self.i < len(self.layers) else ("", {})

    def take(self, *classes: str, when=lambda cfg: True) -> dict | None:
        """The next layer's config if it is one of `classes` and `when` holds (consumed)."""
        kind, cfg = self.peek()
        if kind in classes and when(cfg):
            self.i += 1
            return cfg
        return None

    def need(self, what: str, *classes: str) -> dict:
        cfg = self.take(*classes)
        if cfg is None:
            kind, nxt = self.peek()
            found = f"layer {nxt.get('name')!r} ({kind})" if kind else "the end of the model"
            raise ModelError(f"{self.path}: not the report's model: expected {what}, found {found}")
        return cfg

    def fail(self, cfg: dict, why: str) -> ModelError:
        return ModelError(f"{self.path}: layer {cfg.get('name')!r}: {why}")


def _activation(q: _LayerQueue, dense: dict) -> tuple[str, float]:
    """(relu | leaky_relu, slope) of the hidden dense layer, or of the layer right after it."""
    act = dense.get("activation")
    if act == "relu":
        return "relu", 0.0
    if act == "leaky_relu":
        return "leaky_relu", 0.2  # keras.activations.leaky_relu's default slope
    if act != "linear":
        raise q.fail(dense, f"activation {act!r} is not supported (relu or leaky_relu)")
    kind = q.peek()[0]
    layer = q.need("the hidden activation", "ReLU", "LeakyReLU", "Activation")
    if kind == "Activation":
        return _activation(q, layer)
    if kind == "LeakyReLU":  # the slope is alpha in Keras 2, negative_slope in Keras 3
        return "leaky_relu", float(layer.get("negative_slope", layer.get("alpha", 0.3)))
    if layer.get("max_value") is not None or layer.get("threshold") or layer.get("negative_slope"):
        raise q.fail(layer, "only a plain ReLU is supported")
    return "relu", 0.0


def parse_report_config(config: dict, path) -> ReportArchitecture:
    """Check that a Keras model config is the report's architecture and read its settings.

    [Rescaling] -> [UpSampling2D bilinear] -> ResNet50V2 -> GlobalAveragePooling2D -> [Dropout]
    -> Dense (relu | leaky_relu) -> BatchNormalization -> Dense (softmax | linear) [-> softmax].
    """
    layers = config.get("config", {}).get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        raise ModelError(f"{path}: the model config lists no layers")
    q = _LayerQueue([la for la in layers if la.get("class_name") != "InputLayer"], path)
    if (cfg := q.take("Rescaling")) is not None:
        scale, offset = float(cfg.get("scale", 1)), float(cfg.get("offset", 0))
        if not np.allclose([scale, offset], [1 / 127.5, -1]):
            raise q.fail(cfg, "only Rescaling(1/127.5, offset=-1) (Keras's 'tf' mode) fits")
    resize = 1
    if (cfg := q.take("UpSampling2D")) is not None:
        size = np.broadcast_to(cfg.get("size", 2), (2,)).tolist()
        if size[0] != size[1] or cfg.get("interpolation") != "bilinear":
            raise q.fail(cfg, f"need a square bilinear UpSampling2D, found {size}")
        resize = int(size[0])
    _skip_backbone(q)
    q.need("GlobalAveragePooling2D", "GlobalAveragePooling2D")
    dropout = q.take("Dropout") or {}
    dense = q.need("the hidden Dense layer", "Dense")
    activation, slope = _activation(q, dense)
    bn = q.need("BatchNormalization", "BatchNormalization")
    # Our head's batch norm is Keras's default one (epsilon 1e-3, on the features axis).
    if not np.isclose(bn.get("epsilon", 1e-3), 1e-3) or bn.get("axis", -1) not in (
        -1,
        1,
        [-1],
        [1],
    ):
        raise q.fail(bn, "only a default BatchNormalization (epsilon 1e-3, last axis) fits")
    out = q.need("the output Dense layer", "Dense")
    output = out.get("activation")
    if output == "linear":  # logits, maybe then a Softmax or Activation("softmax") layer
        after = q.take(
            "Softmax", "Activation", when=lambda c: c.get("activation", "softmax") == "softmax"
        )
        output = "linear" if after is None else "softmax"
    if output not in ("softmax", "linear"):
        raise q.fail(out, f"output activation {output!r}: need softmax or linear")
    if q.peek()[0]:
        raise q.fail(q.peek()[1], "unexpected after the output layer")
    return ReportArchitecture(
        num_classes=int(out["units"]),
        head_units=int(dense["units"]),
        dropout=float(dropout.get("rate", 0.0)),
        activation=activation,
        leaky_slope=slope if activation == "leaky_relu" else 0.01,
        resize=resize,
        preprocess="tf",
        output_activation=output,
        bn_momentum=float(bn.get("momentum", 0.99)),
        input_size=_input_size(layers),
        head_layers={
            "head.dense": dense["name"],
            "head.batch_normalization": bn["name"],
            "head.dense_1": out["name"],
        },
    )


def _skip_backbone(q: _LayerQueue) -> None:
    """Consume the backbone: one nested model, or its layers inline (conv1_pad .. post_relu).

    Its weights, not its config, say whether it is a ResNet50V2: they are checked layer by layer.
    """
    if q.take(*BACKBONE_CLASSES) is not None:
        return
    if q.peek()[1].get("name") != "conv1_pad":
        q.need("the ResNet50V2 backbone", *BACKBONE_CLASSES)
    while q.peek()[0]:
        q.i += 1
        if q.layers[q.i - 1][1].get("name") == "post_relu":
            return
    raise ModelError(f"{q.path}: the inline ResNet50V2 backbone has no 'post_relu' layer")


def _input_size(layers: list[dict]) -> int | None:
    """The side of the model's square input (32 for CIFAR), None where not fixed."""
    for layer in layers:
        cfg = layer.get("config", {})
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if shape:
            return int(shape[1]) if shape[1] is not None and shape[1] == shape[2] else None
    return None


def load_keras_report_model(path: str | os.PathLike) -> KerasReportModel:
    """Read a whole Keras model of the report (saved as .h5 or .keras) for our Classifier."""
    with open_keras_file(path) as (f, config):
        if config is None:
            raise ModelError(
                f"{path}: holds weights only, no model config; save the whole model with "
                "model.save('model.h5') or model.save('model.keras')"
            )
        arch = parse_report_config(config, path)
        layers = read_keras_layers(f, path)
    backbone, names = _backbone_names("backbone.")
    names |= arch.head_layers
    model = Classifier(backbone, arch.num_classes, **arch.classifier_kwargs())
    state = convert_layers(model, names, layers, path)
    _unexpected(layers, set(names.values()), path, "the report's model")
    return KerasReportModel(state, arch)
