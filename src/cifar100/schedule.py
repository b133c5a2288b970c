"""The learning-rate schedule of the two-phase transfer-learning recipe, a pure function of the
settings: the trainers follow it, and the learning-rate plot draws it.

`lr_schedule(cfg.train, train_images)` lists every step's rate and phase as the trainers set
them (for the plot, and anyone who wants to see a schedule before a run).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from cifar100.config import TrainConfig


def finetune_lr(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to zero at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


class ScheduledStep(NamedTuple):
    """One optimizer step of a run's schedule."""

    step: int  # the run's step index, from 0
    epoch: float  # epochs done once this step is taken: 1.0 is the end of the first
    lr: float  # the base rate it runs at: the head's (the backbone's is x backbone_lr_scale)
    phase: str  # "frozen" (head warm-up, Adam at head_lr), "finetune" or "features"


def steps_per_epoch(cfg: TrainConfig, train_images: int) -> int:
    """Optimizer steps in an epoch over `train_images`, as the trainers take them.

    Fine-tuning drops a last partial batch, unless the split fits in one batch (then it is
    the one step); micro-batches (`accumulate`) split a step, they do not add steps. Features
    mode trains on whole batches of feature rows: twice the images with feature_flip.
    """
    if cfg.mode == "features":
        rows = train_images * (2 if cfg.feature_flip else 1)
        return rows // min(cfg.batch_size, rows) if rows else 0
    if train_images > cfg.batch_size:
        return train_images // cfg.batch_size
    return 1 if train_images else 0


def lr_schedule(cfg: TrainConfig, train_images: int) -> list[ScheduledStep]:
    """Every step's learning rate and phase for `cfg` (the run's train settings, as its
    config.json records them) over a training split of `train_images` images.

    Frozen epochs hold head_lr (Adam, no schedule); fine-tuning warms up linearly over
    warmup_epochs, then decays by a cosine to zero at its last step (`finetune_lr`), counting
    its own steps from its first; features mode is that schedule over all its epochs.
    """
    steps = steps_per_epoch(cfg, train_images)
    tuned_from = 0 if cfg.mode == "features" else cfg.freeze_epochs
    total, warmup = (cfg.epochs - tuned_from) * steps, int(cfg.warmup_epochs * steps)
    phase_after = "features" if cfg.mode == "features" else "finetune"
    schedule = []
    for step in range(cfg.epochs * steps):
        epoch = step // steps
        if epoch < tuned_from:
            lr, phase = cfg.head_lr, "frozen"
        else:
            lr, phase = finetune_lr(step - tuned_from * steps, total, warmup, cfg.lr), phase_after
        schedule.append(ScheduledStep(step, (step + 1) / steps, lr, phase))
    return schedule
