"""What a training step does to its global batch before the model, built once from the config.

    augment = AugmentPipeline.from_config(cfg.train, num_classes, channels_last=True)
    x, targets = augment(images, labels, generator)   # uint8 NHWC -> float NCHW, soft targets

uint8 images -> float32 NCHW (augment.to_float_nchw) -> ImageAugment (crop, flip, policy,
erasing) -> mixup / cutmix with label smoothing (mixing.py). Every draw comes from the one
generator, in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cifar100.config import TrainConfig
from cifar100.data.augment import ImageAugment, to_float_nchw
from cifar100.data.mixing import mix_batch


@dataclass(frozen=True)
class Mixing:
    """Mixup or cutmix with probability mix_prob, label smoothing folded into the soft targets
    (mixing.mix_batch); with both alphas 0 or mix_prob 0, smoothed one-hot targets alone."""

    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    label_smoothing: float = 0.0

    def __call__(
        self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return mix_batch(
            x,
            labels,
            self.num_classes,
            self.mixup_alpha,
            self.cutmix_alpha,
            self.mix_prob,
            self.label_smoothing,
            generator,
        )


@dataclass(frozen=True)
class AugmentPipeline:
    """uint8 (N, H, W, 3) images and (N,) labels -> augmented float32 (N, 3, H, W) inputs in
    [0, 255] (channels_last where asked) and (N, K) soft targets."""

    images: ImageAugment
    mixing: Mixing
    channels_last: bool = False

    @classmethod
    def from_config(
        cls, t: TrainConfig, num_classes: int, channels_last: bool = False
    ) -> AugmentPipeline:
        """The pipeline train settings `t` describe, for `num_classes` classes."""
        images = ImageAugment.build(
            t.crop_padding,
            t.flip,
            t.policy,
            magnitude=t.policy_magnitude,
            ops=t.policy_ops,
            erasing=t.random_erasing,
        )
        mixing = Mixing(num_classes, t.mixup_alpha, t.cutmix_alpha, t.mix_prob, t.label_smoothing)
        return cls(images, mixing, channels_last)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images(to_float_nchw(images, self.channels_last), generator)
        return self.mixing(x, labels, generator)
