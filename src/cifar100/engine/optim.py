"""Optimizers and the learning-rate schedule of the two-phase transfer-learning recipe."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from cifar100.config import TrainConfig


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Decay conv and dense weights only: decaying norms and biases only hurts (common practice)."""
    decay, no_decay = [], []
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    modules: Iterable[nn.Module], cfg: TrainConfig, phase: str
) -> torch.optim.Optimizer:
    """Adam for the frozen head warm-up; the configured optimizer for fine-tuning."""
    if phase == "frozen":
        return torch.optim.Adam(param_groups(modules, 0.0), lr=cfg.head_lr)
    groups = param_groups(modules, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    # Adam's weight decay is L2 added to the gradient, as Keras's kernel_regularizer would be.
    return torch.optim.Adam(groups, lr=cfg.lr)


def finetune_lr(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to zero at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
