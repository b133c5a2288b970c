"""Frozen-feature mode's second half: the head alone, trained for many epochs on cached features.

cifar100 train --preset cpu      # EfficientNet-Lite0 features, 30 head epochs, minutes on a CPU
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cifar100.data.tensors import ImageSet
from cifar100.engine.epoch_end import end_epoch, patience_spent, use_final_weights
from cifar100.engine.features import FeatureCache, cached_features
from cifar100.engine.interrupt import StepWatch
from cifar100.engine.optim import build_optimizer, set_lr
from cifar100.engine.run import Run
from cifar100.engine.seeding import seed_epoch
from cifar100.errors import ConfigError, TrainingError
from cifar100.metrics import accuracy
from cifar100.schedule import finetune_lr


def fit_features(
    run: Run, last_epoch: int, progress: bool, watch: StepWatch
) -> torch.Tensor | None:
    """Frozen-feature mode: the backbone runs once (cached), then the head trains on features.

    Returns the test logits, computed from cached test features (the best epoch's head when
    train.early_stopping ended it), or None when it stopped early otherwise. The checkpoint
    is a normal full-model one (the trained head inside the model).
    Head epochs take seconds, so a stop request is honoured at the next epoch's end.
    """
    t, model = run.cfg.train, run.model
    if run.dist.enabled:
        raise ConfigError("train.mode=features runs in one process: start it without torchrun")
    model.backbone.requires_grad_(False)
    feats = feature_source(run, progress)
    train_x = feats(run.train_set, "train", t.feature_flip).to(run.device)
    train_y = run.train_set.labels.repeat(2 if t.feature_flip else 1).to(run.device)
    val_x = feats(run.val_set, "val")
    optimizer = build_optimizer([model.head], t, "features")
    saved = run.optimizer_state("features", run.start_epoch)
    if saved is not None:
        optimizer.load_state_dict(saved)
    steps = len(train_y) // min(t.batch_size, len(train_y))
    lr_at = partial(
        finetune_lr,
        total_steps=t.epochs * steps,
        warmup_steps=int(t.warmup_epochs * steps),
        peak=t.lr,
    )
    watch.signals.unit = "head epoch"  # seconds each: a stop waits for the epoch's end
    with watch.signals:  # head epochs only: Ctrl-C during extraction stops at once
        for epoch in range(run.start_epoch, last_epoch):
            if patience_spent(run):
                break
            started = time.perf_counter()
            gen = seed_epoch(t.seed, epoch)  # dropout and shuffling, as in fine-tuning
            stats = train_head_epoch(
                model.head,
                train_x,
                train_y,
                optimizer,
                t.batch_size,
                t.label_smoothing,
                generator=gen,
                lr_fn=lr_at,
                step0=epoch * steps,
            )
            if not math.isfinite(stats["train_loss"]):
                raise TrainingError(f"epoch {epoch + 1}: the loss is not finite; lower train.lr")
            stats.pop("steps", None)
            val_logits = head_logits(model.head, val_x)
            end_epoch(run, epoch, "features", stats, optimizer, started, val_logits)
            if watch.after_epoch():
                return None
    if run.early_stop is None and last_epoch < t.epochs:
        return None
    use_final_weights(run)  # train.final's head gives the test logits
    return head_logits(model.head, feats(run.splits.test, "test"))


def feature_source(run: Run, progress: bool) -> Callable[..., torch.Tensor]:
    """feats(data, split, flip=False): the run's cached features of `data`, float32 on the CPU."""
    t, cache = run.cfg.train, FeatureCache(run.cache)

    def feats(data: ImageSet, split: str, flip: bool = False) -> torch.Tensor:
        return cached_features(
            run.model,
            data,
            split,
            cache,
            run.cfg.model,
            run.device,
            t.eval_batch_size,
            t.amp,
            flip,
            progress and run.dist.is_main,
        )

    return feats


def train_head_epoch(
    head: nn.Module,
    feats: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    label_smoothing: float = 0.0,
    generator: torch.Generator | None = None,
    lr_fn: Callable[[int], float] | None = None,
    step0: int = 0,
) -> dict[str, float]:
    """One shuffled epoch of `head` on features, in train mode (dropout, batch-norm statistics).

    Full batches only (batch norm needs more than one row); lr_fn(step0 + i) sets step i's lr.
    Returns train_loss, train_top1, lr, images_per_s and steps (for the next epoch's step0).
    """
    n = len(labels)
    if n < 2:
        raise ValueError(f"{n} feature rows: head training needs at least 2")
    bs = min(batch_size, n)
    steps = n // bs
    device = next(head.parameters()).device
    gen_device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(n, generator=generator, device=gen_device).to(feats.device)
    labels = labels.to(feats.device)
    head.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    start = time.perf_counter()
    for i in range(steps):
        if lr_fn is not None:
            set_lr(optimizer, lr_fn(step0 + i))
        idx = order[i * bs : (i + 1) * bs]
        x = feats[idx].to(device, non_blocking=True)
        y = labels[idx].to(device, non_blocking=True)
        logits = head(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * bs
        correct += (logits.detach().argmax(1) == y).sum()
    seen = steps * bs
    train_loss = float(loss_sum) / seen  # the one host synchronisation
    elapsed = time.perf_counter() - start
    return {
        "train_loss": train_loss,
        "train_top1": float(correct) / seen,
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": seen / max(elapsed, 1e-9),
        "steps": steps,
    }


@torch.no_grad()
def head_logits(head: nn.Module, feats: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Float32 logits on the CPU of `head` in eval mode (for classification_metrics too)."""
    was_training = head.training
    head.eval()
    device = next(head.parameters()).device
    try:
        out = [
            head(feats[lo : lo + batch_size].to(device)).float().cpu()
            for lo in range(0, len(feats), batch_size)
        ]
    finally:
        head.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def evaluate_head(
    head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024
) -> dict[str, float]:
    """Loss, top-1 and top-5 (more than 5 classes only) of `head` on features, in eval mode."""
    return accuracy(head_logits(head, feats, batch_size), labels)
