"""ResNet50V2 feature extractor, equal layer for layer to `keras.applications.ResNet50V2`,
and the `resnet50v2` backbone: Keras's ImageNet weights, read with h5py (no TensorFlow).

Built with include_top=False, pooling=None: (N, 3, H, W) preprocessed input -> (N, 2048, H/32,
W/32). Modules carry Keras layer names (see `keras_layer_names`) so HDF5 weights map 1:1.

    backbone.load_state_dict(load_keras_resnet50v2_h5("resnet50v2_..._notop.h5"))
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from cifar100.models.registry import BackboneSpec, register_backbone
from cifar100.weights.keras_to_torch import read_keras_backbone
from cifar100.weights.sources import WeightFile, resolve_weights

# Keras BatchNormalization: epsilon=1.001e-5 in ResNet; momentum 0.99 on the moving average,
# which is torch momentum 0.01 (torch weights the new batch statistic, Keras the old value).
BN_EPS = 1.001e-5
BN_MOMENTUM = 0.01

# (stack name, bottleneck filters, blocks, stride of the stack's last block)
STACKS = (("conv2", 64, 3, 2), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 1))

# Block attribute -> suffix of the Keras layer name (block prefix + "_" + suffix).
BLOCK_LAYERS = {
    "preact_bn": "preact_bn",
    "shortcut": "0_conv",
    "conv1": "1_conv",
    "bn1": "1_bn",
    "conv2": "2_conv",
    "bn2": "2_bn",
    "conv3": "3_conv",
}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class PreActBottleneck(nn.Module):
    """Keras `residual_block_v2`: BN-ReLU pre-activation, 1x1 -> 3x3 (strided) -> 1x1."""

    def __init__(self, in_channels: int, filters: int, stride: int, conv_shortcut: bool) -> None:
        super().__init__()
        out_channels = 4 * filters
        self.stride = stride
        self.preact_bn = _bn(in_channels)
        # Keras: a biased 1x1 conv on the pre-activation in each stack's first block; elsewhere
        # the identity, subsampled by MaxPooling2D(1, strides) where the block strides.
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride) if conv_shortcut else None
        )
        self.conv1 = nn.Conv2d(in_channels, filters, 1, bias=False)
        self.bn1 = _bn(filters)
        # Keras pads explicitly (ZeroPadding2D(1)) then convolves "valid": the same as padding=1.
        self.conv2 = nn.Conv2d(filters, filters, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(filters)
        self.conv3 = nn.Conv2d(filters, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = F.relu(self.preact_bn(x))
        if self.shortcut is not None:
            shortcut = self.shortcut(preact)
        elif self.stride > 1:
            # MaxPooling2D with pool size 1 is plain subsampling: ceil(H / stride) rows, the
            # same count the strided 3x3 conv on the main path yields.
            shortcut = x[:, :, :: self.stride, :: self.stride]
        else:
            shortcut = x
        y = F.relu(self.bn1(self.conv1(preact)))
        y = F.relu(self.bn2(self.conv2(y)))
        return shortcut + self.conv3(y)


class ResNet50V2(nn.Module):
    """The Keras ResNet50V2 backbone without its top; output (N, 2048, H/32, W/32), H >= 32."""

    out_features = 2048

    def __init__(self) -> None:
        super().__init__()
        # V2 has no BN/ReLU after the stem conv: each block pre-activates its own input.
        self.conv1_conv = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.block_names: list[str] = []
        in_channels = 64
        for stack, filters, blocks, last_stride in STACKS:
            for i in range(1, blocks + 1):
                # Keras strides the LAST block of a stack (not the first, as in V1).
                stride = last_stride if i == blocks else 1
                name = f"{stack}_block{i}"
                block = PreActBottleneck(in_channels, filters, stride, conv_shortcut=i == 1)
                self.add_module(name, block)
                self.block_names.append(name)
                in_channels = 4 * filters
        self.post_bn = _bn(in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He init for convs, zero biases, BN to identity.

        Keras uses glorot_uniform; He (fan_out) trains better from scratch, and pretrained
        weights overwrite all of it anyway.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 (7x7/2) then pool1 (3x3/2): (N, 3, H, W) -> (N, 64, H/4, W/4)."""
        x = self.conv1_conv(x)
        # Keras pads with ZEROS before this max pool (ZeroPadding2D + "valid" pool), and the
        # un-activated stem output can be negative there; MaxPool2d(padding=1) pads with -inf.
        x = F.pad(x, (1, 1, 1, 1))
        return F.max_pool2d(x, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.block_names:
            x = getattr(self, name)(x)
        return F.relu(self.post_bn(x))

    def keras_layer_names(self) -> dict[str, str]:
        """Torch module path -> Keras layer name, for every module that holds weights."""
        names = {"conv1_conv": "conv1_conv"}
        for block in self.block_names:
            for attr, suffix in BLOCK_LAYERS.items():
                if getattr(getattr(self, block), attr) is not None:
                    names[f"{block}.{attr}"] = f"{block}_{suffix}"
        names["post_bn"] = "post_bn"
        return names


# --weights name -> published file. The md5 is the one Keras checks on download
# (keras/src/applications/resnet.py, WEIGHTS_HASHES["resnet50v2"][1], the no-top file); the
# size is the one Keras's own download progress reports for it ("94668760/94668760").
PUBLISHED = {
    "imagenet": WeightFile(
        filename="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        base_url="https://storage.googleapis.com/tensorflow/keras-applications/resnet/",
        md5="fac2f116257151a9d068a22e544a4917",
        size=94_668_760,
    ),
}


def load_keras_resnet50v2_h5(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A `ResNet50V2` state_dict from Keras weights (the no-top ImageNet file, or any model
    whose backbone, top-level or nested, is Keras's ResNet50V2)."""
    # A real (CPU) template for shapes: building one costs 0.2 s, while the meta device's
    # first use in a process costs over a second.
    backbone = ResNet50V2()
    names = backbone.keras_layer_names()
    return read_keras_backbone(path, backbone, names, "conv1_conv", "ResNet50V2")


def load_resnet50v2_weights(
    backbone: ResNet50V2, source: str, cache_dir: str | os.PathLike | None = None
) -> None:
    """Keras's ImageNet weights ("imagenet", downloaded once) or a Keras .h5 file, in place."""
    path = resolve_weights("resnet50v2", PUBLISHED, source, cache_dir)
    backbone.load_state_dict(load_keras_resnet50v2_h5(path), strict=True)


register_backbone(
    BackboneSpec(
        name="resnet50v2",
        constructor=ResNet50V2,
        out_features=ResNet50V2.out_features,
        native_size=224,
        preprocessing="tf",  # x / 127.5 - 1, as Keras's resnet_v2.preprocess_input
        weight_sources={
            "imagenet": f"Keras applications HDF5 ({PUBLISHED['imagenet'].filename})",
            "none": "random init",
        },
        load_weights=load_resnet50v2_weights,
    )
)
