"""The report's classifier: preprocess -> bilinear upsampling -> backbone -> pool -> head.

Input is (N, 3, H, W) raw pixel values in [0, 255]; `forward` returns logits. The engine may
freeze `model.backbone` and train `model.head` alone, which takes pooled (N, features) input.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cifar100.config import CHOICES
from cifar100.errors import ModelError

PREPROCESS_MODES = CHOICES["model.preprocess"]  # the one list, config.py's
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocess(nn.Module):
    """Pixels in [0, 255] -> the backbone's input range; `mode` follows Keras imagenet_utils.

    tf: [-1, 1] (Keras ResNet50V2); torch: ImageNet mean/std on x/255; none: x/255;
    raw: unchanged (a Keras model that was fed 0..255 pixels);
    lite: (x - 127) / 128, the inception-style scaling of the EfficientNet-Lite weights.
    """

    def __init__(self, mode: str = "tf") -> None:
        super().__init__()
        if mode not in PREPROCESS_MODES:
            raise ModelError(f"preprocessing mode {mode!r}: choose {', '.join(PREPROCESS_MODES)}")
        self.mode = mode
        # Not persistent: constants, so checkpoints and weight files never carry them.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            return (x / 255.0 - self.mean) / self.std
        if self.mode == "raw":
            return x
        if self.mode == "lite":
            return (x - 127.0) / 128.0
        return x / 255.0

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class Upsample(nn.Module):
    """Keras `UpSampling2D(size=(f, f), interpolation="bilinear")`.

    That is tf.image.resize bilinear: half-pixel centres, no antialiasing.
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2] * self.factor, x.shape[-1] * self.factor)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class GlobalAvgPool(nn.Module):
    """(N, C, H, W) -> (N, C), the mean over space (Keras GlobalAveragePooling2D)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _glorot(linear: nn.Linear) -> nn.Linear:
    # Keras Dense defaults: glorot_uniform kernel, zero bias.
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def make_head(
    in_features: int,
    num_classes: int,
    units: int = 256,
    dropout: float = 0.25,
    activation: str = "relu",
    leaky_slope: float = 0.01,
) -> nn.Sequential:
    """Dropout -> dense -> activation -> batch norm -> dense_1 (logits), named as in Keras."""
    if activation == "relu":
        act: nn.Module = nn.ReLU()
    elif activation == "leaky_relu":
        act = nn.LeakyReLU(negative_slope=leaky_slope)
    else:
        raise ModelError(f"activation {activation!r}: choose relu or leaky_relu")
    return nn.Sequential(
        OrderedDict(
            dropout=nn.Dropout(dropout),
            dense=_glorot(nn.Linear(in_features, units)),
            activation=act,
            # Keras BatchNormalization defaults: momentum 0.99 (torch 0.01), epsilon 1e-3.
            batch_normalization=nn.BatchNorm1d(units, eps=1e-3, momentum=0.01),
            dense_1=_glorot(nn.Linear(units, num_classes)),
        )
    )


class Classifier(nn.Module):
    """Raw pixels (N, 3, H, W) in [0, 255] -> logits (N, num_classes)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        preprocess: str = "tf",
        resize: int = 7,
        head_units: int = 256,
        dropout: float = 0.25,
        activation: str = "relu",
        leaky_slope: float = 0.01,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ModelError(f"num_classes={num_classes}: need at least 1")
        if resize < 1:
            raise ModelError(f"resize={resize}: must be a whole number >= 1")
        self.num_classes = num_classes
        self.preprocess = Preprocess(preprocess)
        self.upsample = Upsample(resize) if resize > 1 else nn.Identity()
        self.backbone = backbone
        self.pool = GlobalAvgPool()
        self.head = make_head(
            backbone.out_features, num_classes, head_units, dropout, activation, leaky_slope
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, out_features): what `head` consumes (and can cache)."""
        if not x.is_floating_point():
            x = x.float()
        return self.pool(self.backbone(self.upsample(self.preprocess(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities (N, num_classes); the caller picks train/eval mode."""
        return torch.softmax(self(x).float(), dim=-1)
