"""Keras-style parameter counts and a `model.summary()`-like table of the Classifier.

Keras counts BatchNormalization moving mean/variance as (non-trainable) weights; torch keeps
them as buffers. Counting them here makes our numbers comparable with the report's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cifar100.models.head import Classifier


def keras_param_count(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) as Keras counts them.

    total = parameters + BN running_mean/running_var; trainable = parameters with requires_grad,
    so a frozen module counts as non-trainable, as a Keras layer with trainable=False does.
    """
    total = trainable = 0
    for p in module.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            total += m.running_mean.numel() + m.running_var.numel()
    return total, trainable


@dataclass
class SummaryRow:
    """One layer of the table; shapes are NHWC with None for the batch, as Keras prints them."""

    name: str
    kind: str
    input_shape: str
    output_shape: str
    params: int
    trainable: int


def _keras_shape(shape: torch.Size) -> str:
    dims = list(shape[1:])
    if len(dims) == 3:  # NCHW -> NHWC
        dims = dims[1:] + dims[:1]
    return "(" + ", ".join(["None", *map(str, dims)]) + ")"


def _layers(model: Classifier) -> list[tuple[str, str, nn.Module]]:
    """(Keras name, Keras type, module) in forward order, as the report's Keras model has them."""
    layers: list[tuple[str, str, nn.Module]] = []
    # With resize == 1 there is no upsampling layer (an Identity): the row is omitted, as a Keras
    # model built without UpSampling2D would show none. Preprocessing happened outside the Keras
    # model (preprocess_input on the arrays), so it has no row either.
    if not isinstance(model.upsample, nn.Identity):
        layers.append(("up_sampling2d", "UpSampling2D", model.upsample))
    # The registry's name where the backbone has one (EfficientNetLite serves three variants).
    name = getattr(model.backbone, "variant", None) or type(model.backbone).__name__.lower()
    layers.append((name, "Functional", model.backbone))
    layers.append(("global_average_pooling2d", "GlobalAveragePooling2D", model.pool))
    head = model.head
    layers.append(("dropout", "Dropout", head.dropout))
    layers.append(("dense", "Dense", head.dense))
    # Keras folds "relu" into the Dense layer; LeakyReLU is a layer of its own there.
    if isinstance(head.activation, nn.LeakyReLU):
        layers.append(("leaky_re_lu", "LeakyReLU", head.activation))
    layers.append(("batch_normalization", "BatchNormalization", head.batch_normalization))
    layers.append(("dense_1", "Dense", head.dense_1))
    return layers


def summary_rows(model: Classifier, image_size: int) -> list[SummaryRow]:
    """One row per Keras layer; shapes come from a forward pass of one zero image."""
    layers = _layers(model)
    shapes: dict[int, tuple[str, str]] = {}

    def record(key: int):
        def hook(_m: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            shapes[key] = (_keras_shape(inputs[0].shape), _keras_shape(output.shape))

        return hook

    handles = [m.register_forward_hook(record(i)) for i, (_, _, m) in enumerate(layers)]
    modes = {m: m.training for m in model.modules()}
    p = next(model.parameters())
    x = torch.zeros(1, 3, image_size, image_size, device=p.device, dtype=p.dtype)
    try:
        model.eval()  # batch norm on a batch of one needs inference mode
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)

    input_shape = _keras_shape(x.shape)
    rows = [SummaryRow("input_layer", "InputLayer", "-", input_shape, 0, 0)]
    for i, (name, kind, module) in enumerate(layers):
        total, trainable = keras_param_count(module)
        rows.append(SummaryRow(name, kind, *shapes[i], total, trainable))
    return rows


def format_summary(model: Classifier, image_size: int) -> str:
    """A Keras-like table: layer (type), input shape, output shape, params; then the totals."""
    rows = summary_rows(model, image_size)
    header = ("Layer (type)", "Input shape", "Output shape", "Param #")
    cells = [(f"{r.name} ({r.kind})", r.input_shape, r.output_shape, f"{r.params:,}") for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(4)]

    def line(c: tuple[str, ...]) -> str:
        # Names and shapes left-aligned, counts right-aligned, as Keras prints them.
        return "  ".join([*(c[i].ljust(widths[i]) for i in range(3)), c[3].rjust(widths[3])])

    rule = "-" * len(line(header))
    total, trainable = keras_param_count(model)
    out = [rule, line(header), rule.replace("-", "=")]
    out += [line(c) for c in cells]
    out += [
        rule,
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
    ]
    return "\n".join(out)
