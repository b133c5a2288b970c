"""The saved Keras config of a report model, checked layer by layer against the report's
architecture and read into a ReportArchitecture (our Classifier's settings)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cifar100.config import ModelConfig
from cifar100.errors import ModelError


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
    # Layers with weights that are not the classifier's: our export's trust head (TRUST_HEAD)
    other_layers: tuple[str, ...] = ()

    def model_config(self) -> ModelConfig:
        """Our settings for this architecture (weights: none, they come from the file)."""
        return ModelConfig(
            backbone="resnet50v2",
            weights="none",
            resize=self.resize,
            head_units=self.head_units,
            dropout=self.dropout,
            activation=self.activation,
            leaky_slope=self.leaky_slope,
            bn_momentum=self.bn_momentum,
            preprocess=self.preprocess,
        )


BACKBONE_CLASSES = ("Functional", "Model", "Sequential")
# What cifar100's Keras export (export/keras_file.py) adds after the logits, (name, class) in
# Keras's layer order: the calibrated probabilities, OOD score and verdict of runtime/trust.py.
TRUST_HEAD = (
    ("ood_softmax", "Activation"),
    ("ood_log_softmax", "Activation"),
    ("ood_product", "Multiply"),
    ("ood_entropy", "Dense"),  # frozen, kernel -1: minus the sum of the products
    ("ood_margin", "Dense"),  # frozen: 2**100 * (entropy - threshold)
    ("ood_step", "ReLU"),  # max_value 1: the verdict, 0 or 1
    ("temperature", "Rescaling"),  # 1 / temperature
    ("none_of_these", "Reshape"),
    ("ood_score", "Reshape"),
    ("probabilities", "Activation"),  # softmax
)


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
    -> Dense (relu | leaky_relu) -> BatchNormalization -> Dense (softmax | linear) [-> softmax
    | our export's TRUST_HEAD].
    """
    try:
        return _parse(config, path)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
        # A config of another shape than Keras writes (a hand-edited or foreign file).
        raise ModelError(
            f"{path}: its model config is not one Keras writes for a model "
            f"({type(e).__name__}: {e}); save the model again with model.save"
        ) from None


def _parse(config: dict, path) -> ReportArchitecture:
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
    trust = output == "linear" and _take_trust_head(q)
    if trust:  # our export's: its "probabilities" are a softmax of the logits
        output = "softmax"
    elif output == "linear":  # logits, maybe then a Softmax or Activation("softmax") layer
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
        other_layers=("ood_entropy", "ood_margin") if trust else (),
    )


def _take_trust_head(q: _LayerQueue) -> bool:
    """Consume the rest of the layers if they are cifar100's trust head (TRUST_HEAD)."""
    rest = [(cfg.get("name"), kind) for kind, cfg in q.layers[q.i :]]
    if sorted(rest) != sorted(TRUST_HEAD):  # in any order: Keras's, or a hand-written one
        return False
    q.i = len(q.layers)
    return True


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
