"""The report's model as a Keras 3 `.keras` archive, written with json, zipfile, h5py and numpy
alone: TensorFlow is only a test oracle and is never imported on this path.

    write_keras_model(model, cfg.model, 32, Path("model.keras"), temperature=1.4, rule=rule)
    answer = keras.saving.load_model("model.keras").predict(pixels)  # (N, 32, 32, 3) 0..255
    answer["probabilities"]   # (N, C) calibrated: softmax(logits / temperature)
    answer["logits"]          # (N, C)
    answer["ood_score"]       # (N,) the entropy of softmax(logits), nats (runtime/trust.py)
    answer["none_of_these"]   # (N,) 1.0 where ood_score > the rule's threshold, else 0.0

Keras alone computes all four (built-in layers, no custom objects, safe_mode on), as
runtime/trust.py's score_logits does; without a temperature it is 1, without a rule
none_of_these is always 0.0. The verdict is float32 0.0/1.0 (Keras has no boolean layer):
ReLU(max_value=1) of 2**100 * (ood_score - threshold), a Dense layer. 2**100 and -2**100 *
threshold are exact in float32, so the Dense's sum has the sign of ood_score - threshold,
exactly, and for distinct scores and thresholds above 2**-76 nats (thresholds below are
raised to it) a magnitude of at least 2: the step is exactly 0 or 1, and 1 exactly where
Keras's own score is over the threshold (its score differs from PyTorch's by ~1e-6). That
holds in float32 arithmetic: TensorFlow on a recent NVIDIA GPU runs matmuls in TF32 unless
told not to (tf.config.experimental.enable_tensor_float_32_execution(False)), rounding the
Dense layers' inputs to 10 mantissa bits: the scores, and the step's edge, move with them.

The archive is what Keras 3's `model.save("m.keras")` writes (checked against Keras 3.15 by
tests/test_export_keras.py), its members stored uncompressed:
  metadata.json     {"keras_version", "date_saved"}
  config.json       a Functional model: InputLayer (raw pixels) -> Rescaling [-> Normalization]
                    -> [UpSampling2D bilinear] -> resnet50v2 (a nested Functional, layers named
                    as in keras.applications) -> GlobalAveragePooling2D -> Dropout -> Dense
                    [-> LeakyReLU] -> BatchNormalization -> Dense (the logits), then the trust
                    head (TRUST_HEAD: Activation softmax and log_softmax, Multiply, a frozen
                    Dense summing with weights -1, a frozen Dense and a ReLU for the verdict,
                    Rescaling 1/T and Activation softmax), with four named outputs
  model.weights.h5  layers/<key>/vars/<i>, a nested model's under layers/<key>/layers/...; <key>
                    is the layer's class in snake case, numbered in the model's layer order
                    ("conv2d", "conv2d_1", ...). Keras finds weights by these keys, not by layer
                    names (stored only as each vars group's `name`), so the order must be its own.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from cifar100.config import ModelConfig
from cifar100.errors import ModelError
from cifar100.export.job import ExportJob, ExportResult
from cifar100.fileio import atomic_path
from cifar100.models.head import IMAGENET_MEAN, IMAGENET_STD, Classifier, Upsample
from cifar100.models.resnet_v2 import ResNet50V2
from cifar100.runtime.ood_rule import OodRule
from cifar100.runtime.tensor_names import LOGITS, NONE_OF_THESE, OOD_SCORE, PROBABILITIES
from cifar100.weights.keras_report_config import TRUST_HEAD
from cifar100.weights.keras_to_torch import KERAS_ORDER, TORCH_NAME

KERAS_VERSION = "3.15.1"  # the release whose `model.save` layout this copies
FLOAT = "float32"
STEP = 2.0**100  # the verdict's slope (see the docstring): a power of two, exact in float32
LOWEST_THRESHOLD = 2.0**-76  # where STEP * (score - threshold) >= 2 for distinct float32s

# Our Preprocess as Rescaling(scale, offset) on raw pixels: x * scale + offset. The layer is
# always there, "raw"'s identity too: without one, a reader (ours, import-keras) takes the
# model for the report's, fed x/127.5 - 1 from outside.
RESCALING = {
    "tf": (1 / 127.5, -1.0),
    "none": (1 / 255, 0.0),
    "raw": (1.0, 0.0),
    "lite": (1 / 128, -127 / 128),
    "torch": (1 / 255, 0.0),  # then Normalization by ImageNet's mean and std
}


class _Graph:
    """One Functional model's layer configs in Keras's layer order, and their weights."""

    def __init__(self, name: str, input_name: str, shape: list) -> None:
        self.name = name
        self.layers: list[dict] = [
            {
                "module": "keras.layers",
                "class_name": "InputLayer",
                "config": {
                    "batch_shape": shape,
                    "dtype": FLOAT,
                    "sparse": False,
                    "name": input_name,
                },
                "registered_name": None,
                "name": input_name,
                "inbound_nodes": [],
            }
        ]
        self.shapes: dict[str, list] = {input_name: shape}  # layer name -> its output's shape
        self.weights: dict[str, list[np.ndarray]] = {}
        self.nested: dict[str, _Graph] = {}
        self.outputs: dict[str, str] | None = None  # output name -> layer; None: the last layer

    def add(self, cls: str, name: str, inputs: str | list[str], shape=None, weights=(), **config):
        """Append layer `name` called on the outputs of `inputs`; its name stands for its output.

        `shape`: its output's shape, where it differs from its (first) input's.
        """
        layer = {"module": "keras.layers", "class_name": cls, "registered_name": None}
        layer["config"] = {"name": name, "trainable": True, "dtype": FLOAT, **config}
        if weights:
            self.weights[name] = list(weights)
        return self._call(layer, inputs, shape)

    def add_model(self, graph: _Graph, inputs: str, shape: list) -> str:
        """Append a nested Functional model (Keras saves its layers inside its own config)."""
        self.nested[graph.name] = graph
        return self._call(graph.config(), inputs, shape)

    def _call(self, layer: dict, inputs: str | list[str], shape) -> str:
        sources = [inputs] if isinstance(inputs, str) else inputs
        shapes = [self.shapes[s] for s in sources]
        tensors = [
            {
                "class_name": "__keras_tensor__",
                "config": {"shape": self.shapes[s], "dtype": FLOAT, "keras_history": [s, 0, 0]},
            }
            for s in sources
        ]
        single = isinstance(inputs, str)
        name = layer["config"]["name"]
        layer.setdefault("build_config", {"input_shape": shapes[0] if single else shapes})
        layer["name"] = name
        layer["inbound_nodes"] = [{"args": [tensors[0] if single else tensors], "kwargs": {}}]
        self.layers.append(layer)
        self.shapes[name] = shape or shapes[0]
        return name

    def config(self) -> dict:
        """Its config as Keras serialises a Functional model; the last layer is the output,
        unless named `outputs` are set."""
        outputs = [self.layers[-1]["name"], 0, 0]
        if self.outputs is not None:
            outputs = {key: [layer, 0, 0] for key, layer in self.outputs.items()}
        return {
            "module": "keras.src.models.functional",
            "class_name": "Functional",
            "config": {
                "name": self.name,
                "trainable": True,
                "layers": self.layers,
                "input_layers": [self.layers[0]["name"], 0, 0],
                "output_layers": outputs,
            },
            "registered_name": "Functional",
            "build_config": {"input_shape": None},
        }


def _keras_weights(module: nn.Module) -> list[np.ndarray]:
    """A torch layer's tensors in Keras's order and layout (HWIO conv, (in, out) dense kernels)."""
    arrays = []
    for kind in KERAS_ORDER[type(module)]:
        tensor = getattr(module, TORCH_NAME[kind])
        if tensor is None:  # a conv without bias
            continue
        value = tensor.detach().to("cpu", torch.float32).numpy()
        if kind == "kernel":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        arrays.append(np.ascontiguousarray(value))
    return arrays


def _batch_norm(g: _Graph, name: str, x: str, bn: nn.Module, axis: int) -> str:
    # Keras's momentum weights the old moving value, torch's the new batch statistic.
    momentum = round(1.0 - bn.momentum, 10)
    weights = _keras_weights(bn)
    config = {"axis": axis, "momentum": momentum, "epsilon": bn.eps}
    return g.add("BatchNormalization", name, x, weights=weights, **config)


def _dense(g: _Graph, name: str, x: str, linear: nn.Linear, activation: str) -> str:
    units = linear.out_features
    weights = _keras_weights(linear)
    return g.add("Dense", name, x, [None, units], weights, units=units, activation=activation)


def _resnet50v2(backbone: ResNet50V2) -> _Graph:
    """keras.applications.ResNet50V2(include_top=False) as Keras saves it, weights from ours.

    Weighted layers are found by the import side's own mapping (`keras_layer_names`).
    """
    modules = {k: backbone.get_submodule(p) for p, k in backbone.keras_layer_names().items()}
    g = _Graph("resnet50v2", "input_layer", [None, None, None, 3])

    def conv(name: str, x: str) -> str:
        m = modules[name]
        if m.padding[0]:  # Keras pads explicitly (conv1_pad, *_2_pad), then convolves "valid"
            pad = [[m.padding[0]] * 2, [m.padding[1]] * 2]
            x = g.add("ZeroPadding2D", name.removesuffix("conv") + "pad", x, padding=pad)
        config = {"kernel_size": list(m.kernel_size), "strides": list(m.stride)}
        config |= {"padding": "valid", "use_bias": m.bias is not None}
        shape = [None, None, None, m.out_channels]
        return g.add("Conv2D", name, x, shape, _keras_weights(m), filters=m.out_channels, **config)

    def bn_relu(bn: str, relu: str, x: str) -> str:
        x = _batch_norm(g, bn, x, modules[bn], axis=3)
        return g.add("Activation", relu, x, activation="relu")

    x = conv("conv1_conv", "input_layer")
    x = g.add("ZeroPadding2D", "pool1_pad", x, padding=[[1, 1], [1, 1]])
    x = g.add("MaxPooling2D", "pool1_pool", x, pool_size=[3, 3], strides=[2, 2])
    pools = 0  # Keras's automatic names of the shortcuts' pools: max_pooling2d, _1, _2
    for block_name in backbone.block_names:
        block, b = getattr(backbone, block_name), block_name + "_"
        preact = bn_relu(b + "preact_bn", b + "preact_relu", x)
        y = bn_relu(b + "1_bn", b + "1_relu", conv(b + "1_conv", preact))
        y = bn_relu(b + "2_bn", b + "2_relu", conv(b + "2_conv", y))
        # Keras orders layers by depth: the shortcut's layer comes beside the last conv, just
        # before it, and so gets the key ("conv2d_3", "max_pooling2d_1") Keras's save gives it.
        if block.shortcut is not None:
            shortcut = conv(b + "0_conv", preact)
        elif block.stride > 1:
            pool = "max_pooling2d" + (f"_{pools}" if pools else "")
            strides = [block.stride] * 2
            shortcut = g.add("MaxPooling2D", pool, x, pool_size=[1, 1], strides=strides)
            pools += 1
        else:
            shortcut = x
        x = g.add("Add", b + "out", [shortcut, conv(b + "3_conv", y)])
    bn_relu("post_bn", "post_relu", x)
    return g


def _report_graph(
    model: Classifier, image_size: int, temperature: float | None, rule: OodRule | None
) -> _Graph:
    """The whole model: raw pixels (N, S, S, 3) in 0..255 -> the four named outputs."""
    g = _Graph("cifar100_classifier", "pixels", [None, image_size, image_size, 3])
    mode = model.preprocess.mode
    scale, offset = RESCALING[mode]
    x = g.add("Rescaling", "rescaling", "pixels", scale=scale, offset=offset)
    if mode == "torch":  # Keras's per-channel layer; Rescaling documents only scalars
        mean, variance = list(IMAGENET_MEAN), [s * s for s in IMAGENET_STD]
        x = g.add("Normalization", "normalization", x, axis=-1, mean=mean, variance=variance)
    side = image_size
    if isinstance(model.upsample, Upsample):
        f = model.upsample.factor
        side *= f
        shape = [None, side, side, 3]
        x = g.add("UpSampling2D", "up_sampling2d", x, shape, size=[f, f], interpolation="bilinear")
    for _ in range(5):  # ResNet50V2 halves the side five times, rounding up: 224 -> 7
        side = (side + 1) // 2
    features = model.backbone.out_features
    x = g.add_model(_resnet50v2(model.backbone), x, [None, side, side, features])
    x = g.add("GlobalAveragePooling2D", "global_average_pooling2d", x, [None, features])
    head = model.head
    x = g.add("Dropout", "dropout", x, rate=head.dropout.p)
    leaky = isinstance(head.activation, nn.LeakyReLU)
    x = _dense(g, "dense", x, head.dense, "linear" if leaky else "relu")
    if leaky:  # a layer of its own: the "leaky_relu" activation has Keras's fixed slope, 0.2
        x = g.add("LeakyReLU", "leaky_re_lu", x, negative_slope=head.activation.negative_slope)
    x = _batch_norm(g, "batch_normalization", x, head.batch_normalization, axis=-1)
    _trust_head(g, _dense(g, "dense_1", x, head.dense_1, "linear"), temperature, rule)
    return g


def _trust_head(g: _Graph, logits: str, temperature: float | None, rule: OodRule | None) -> None:
    """runtime/trust.py's score_logits in built-in layers, after `logits`: the model's outputs.

    The layers come in the order Keras gives them (by depth, then as met walking back from
    the outputs, which Keras sorts by name), since it finds their weights by that order.
    """
    classes = g.shapes[logits][-1]
    names = iter(TRUST_HEAD)  # (name, class) in the order added here

    def add(cls: str, inputs, shape=None, weights=(), **config) -> str:
        name, expected = next(names)
        assert cls == expected, (name, cls)  # TRUST_HEAD is the parser's list of these layers
        return g.add(cls, name, inputs, shape, weights, **config)

    p = add("Activation", logits, activation="softmax")
    log_p = add("Activation", logits, activation="log_softmax")
    product = add("Multiply", [p, log_p])
    frozen = {"trainable": False, "units": 1, "activation": "linear"}
    minus_one = -np.ones((classes, 1), np.float32)
    score = add("Dense", product, [None, 1], [minus_one], use_bias=False, **frozen)
    if rule is None:  # never: 0 * score - 1 <= -1, which the ReLU makes 0
        step = [np.zeros((1, 1), np.float32), np.array([-1.0], np.float32)]
    else:
        threshold = max(float(np.float32(rule.threshold)), LOWEST_THRESHOLD)
        step = [np.full((1, 1), STEP, np.float32), np.array([-STEP * threshold], np.float32)]
    margin = add("Dense", score, [None, 1], step, use_bias=True, **frozen)
    verdict = add("ReLU", margin, max_value=1.0, negative_slope=0.0, threshold=0.0)
    scaled = add("Rescaling", logits, scale=1.0 / (temperature or 1.0), offset=0.0)
    verdict = add("Reshape", verdict, [None], target_shape=[])
    score = add("Reshape", score, [None], target_shape=[])
    probabilities = add("Activation", scaled, activation="softmax")
    g.outputs = {
        PROBABILITIES: probabilities,
        LOGITS: logits,
        OOD_SCORE: score,
        NONE_OF_THESE: verdict,
    }


def _snake_case(class_name: str) -> str:
    """Keras's naming.to_snake_case: "BatchNormalization" -> "batch_normalization"."""
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _write_weights(group: h5py.Group, graph: _Graph) -> None:
    used: dict[str, int] = {}
    for layer in graph.layers:
        key = _snake_case(layer["class_name"])
        used[key] = used.get(key, -1) + 1
        entry = group.create_group(f"layers/{key}_{used[key]}" if used[key] else f"layers/{key}")
        variables = entry.create_group("vars")
        variables.attrs["name"] = layer["name"]
        for i, value in enumerate(graph.weights.get(layer["name"], [])):
            variables.create_dataset(str(i), data=value)
        if layer["name"] in graph.nested:
            _write_weights(entry, graph.nested[layer["name"]])


def _weights_file(graph: _Graph) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_group("vars").attrs["name"] = graph.name
        _write_weights(f, graph)
    return buffer.getvalue()


def write_keras_export(job: ExportJob) -> ExportResult:
    """`--format keras`: the job's model (the report's architecture) as a .keras file."""
    module, model = job.torch_module(), job.model
    write_keras_model(
        module,
        model.info.model,
        model.image_size,
        job.out,
        temperature=model.temperature,
        rule=model.ood_rule,
    )
    return ExportResult(job.out, job.format, {})


def write_keras_model(
    model: Classifier,
    model_cfg: ModelConfig,
    image_size: int,
    out: Path,
    *,
    temperature: float | None = None,
    rule: OodRule | None = None,
) -> Path:
    """Write `model` (the report's architecture) to `out` as a Keras 3 .keras file, atomically.

    The Keras model takes raw pixels (N, image_size, image_size, 3), floats in 0..255, and does
    our preprocessing itself, so that no consumer can prepare images differently; it returns
    a dict: "probabilities" (softmax(logits / temperature)) and "logits" (N, num_classes),
    "ood_score" and "none_of_these" (N,) (see the module's docstring), in inference mode
    equal to ours.
    """
    out = Path(out)
    if model_cfg.backbone != "resnet50v2" or not isinstance(model.backbone, ResNet50V2):
        raise ModelError(
            f"cannot export backbone {model_cfg.backbone!r} as a Keras model: Keras has no "
            "layer-for-layer equivalent (only the report's resnet50v2 has one); use "
            "--format onnx or --format safetensors instead"
        )
    if out.suffix != ".keras":
        raise ModelError(f"{out}: name it *.keras; keras.saving.load_model goes by the suffix")
    if image_size < 1:
        raise ModelError(f"image size {image_size}: must be a whole number >= 1")
    graph = _report_graph(model, image_size, temperature, rule)
    config = json.dumps(graph.config())
    metadata = json.dumps(
        {"keras_version": KERAS_VERSION, "date_saved": datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    )
    weights = _weights_file(graph)
    with atomic_path(out, "Keras model", len(weights) + len(config)) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            z.writestr("metadata.json", metadata)
            z.writestr("config.json", config)
            z.writestr("model.weights.h5", weights)
    return out
