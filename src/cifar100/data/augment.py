"""Augmentation on whole batches, on the training device.

ImageAugment runs crop -> flip -> policy (policies.py) -> random erasing, its stages chosen
once; mixup and cutmix, which also change the targets, are in mixing.py; pipeline.py joins
them into what a training step does to its batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from cifar100.config import CHOICES
from cifar100.data.policies import (
    draw_normal,
    draw_uniform,
    rand_augment,
    trivial_augment,
)

POLICIES = CHOICES["train.policy"]  # the one list, config.py's


def to_float_nchw(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 (N,H,W,3) -> float32 (N,3,H,W) in [0, 255], the models' input."""
    x = images.permute(0, 3, 1, 2).float()
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each image by `padding` and crop back to size at a random offset per image."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    span = 2 * padding + 1
    dy = torch.randint(0, span, (n,), generator=generator, device=generator.device).to(x.device)
    dx = torch.randint(0, span, (n,), generator=generator, device=generator.device).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None]).view(n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None]).view(n, 1, 1, w)
    out = padded.gather(2, rows.expand(n, c, h, w + 2 * padding))
    return out.gather(3, cols.expand(n, c, h, w))


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5
    flip = flip.to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def random_erasing(
    x: torch.Tensor,
    p: float,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.02, 1 / 3),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """With probability p per image, fill one random rectangle with per-pixel noise.

    The rectangle is drawn as torchvision's RandomErasing draws it (area fraction in `scale`,
    log-uniform aspect in `ratio`, up to 10 tries to fit); the noise is N(127.5, 63.75^2)
    clamped to [0, 255], i.e. about N(0, 1/4) once the model scales pixels to [-1, 1].
    """
    if p <= 0:
        return x
    n, c, h, w = x.shape
    tries = 10
    fraction = scale[0] + (scale[1] - scale[0]) * draw_uniform((n, tries), generator, x.device)
    area = h * w * fraction
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draw_uniform((n, tries), generator, x.device))
    eh = torch.round(torch.sqrt(area * aspect))
    ew = torch.round(torch.sqrt(area / aspect))
    fits = (eh < h) & (ew < w)
    first = fits.int().argmax(1, keepdim=True)  # the first try that fits, as in a loop
    eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)
    erase = (draw_uniform((n,), generator, x.device) < p) & fits.any(1)
    top = torch.floor(draw_uniform((n,), generator, x.device) * (h - eh + 1))
    left = torch.floor(draw_uniform((n,), generator, x.device) * (w - ew + 1))
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
    inside = inside & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1))
    mask = (inside & erase.view(n, 1, 1)).unsqueeze(1)
    noise = (127.5 + 63.75 * draw_normal(tuple(x.shape), generator, x.device)).clamp(0, 255)
    return torch.where(mask, noise.to(x.dtype), x)


# One augmentation stage: stage(x, generator=g) -> x, drawing from g alone.
Stage = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class ImageAugment:
    """The training-time image augmentation, its stages chosen once: crop, flip, policy
    (none | trivial | randaugment), erasing; the result clamped to [0, 255].

    A stage that is off is left out, which draws nothing, as the stage itself would at its
    off setting (padding 0, erasing 0). The output keeps the input's memory format.
    """

    stages: tuple[Stage, ...]

    @classmethod
    def build(
        cls,
        padding: int,
        flip: bool,
        policy: str = "none",
        magnitude: int = 9,
        ops: int = 2,
        erasing: float = 0.0,
    ) -> ImageAugment:
        """`magnitude` and `ops` are RandAugment's."""
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r}: choose one of {', '.join(POLICIES)}")
        stages: list[Stage] = []
        if padding > 0:
            stages.append(partial(random_crop, padding=padding))
        if flip:
            stages.append(random_flip)
        if policy == "trivial":
            stages.append(trivial_augment)
        elif policy == "randaugment":
            stages.append(partial(rand_augment, magnitude=magnitude, ops=ops))
        elif policy != "none":  # a choice in config.CHOICES without its code here
            raise ValueError(f"policy={policy!r} is listed but not implemented")
        if erasing > 0:
            stages.append(partial(random_erasing, p=erasing))
        return cls(tuple(stages))

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        channels_last = x.dim() == 4 and not x.is_contiguous()
        channels_last = channels_last and x.is_contiguous(memory_format=torch.channels_last)
        for stage in self.stages:
            x = stage(x, generator=generator)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return x.clamp(0, 255).contiguous(memory_format=fmt)


def augment_batch(
    x: torch.Tensor,
    padding: int,
    flip: bool,
    generator: torch.Generator,
    policy: str = "none",
    magnitude: int = 9,
    ops: int = 2,
    erasing: float = 0.0,
) -> torch.Tensor:
    """The training-time augmentation: crop, flip, policy (none | trivial | randaugment), erasing.

    `magnitude` and `ops` are RandAugment's; the result is clamped to [0, 255] and keeps the
    input's memory format (channels_last stays channels_last). ImageAugment.build once, for
    many batches.
    """
    return ImageAugment.build(padding, flip, policy, magnitude, ops, erasing)(x, generator)
