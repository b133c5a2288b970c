"""One training step of a run's phase at a given rate, for the learning-rate range test: the
very step training takes (optimizer, batch-norm mode, augmentation and mixing, label
smoothing, batch size, backbone_lr_scale), and a guard that puts every weight back after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from cifar100.data.loader import DeviceBatches
from cifar100.data.pipeline import AugmentPipeline
from cifar100.engine.epoch_meter import EpochMeter
from cifar100.engine.finetune import forward_backward, set_batchnorm_mode, start_phase
from cifar100.engine.head_training import feature_source, train_head_epoch
from cifar100.engine.optim import build_optimizer, set_lr
from cifar100.engine.run import Run
from cifar100.engine.seeding import seed_epoch

Step = Callable[[float], float]  # step(lr) -> the batch's training loss


def finetune_step(run: Run, phase: str) -> Step:
    """Steps of fine-tuning's `phase`: "finetune" (every layer, train.optimizer at train.lr,
    batch norm as train.finetune_bn) or "frozen" (the head alone through the backbone in
    inference mode, Adam at train.head_lr). Batches cycle over the training set."""
    t = run.cfg.train
    epoch = t.freeze_epochs if phase == "finetune" else 0  # an epoch of that phase
    chosen = start_phase(run, epoch)
    set_batchnorm_mode(run.model, "inference" if chosen.name == "frozen" else t.finetune_bn)
    batches = DeviceBatches(
        run.train_set, run.device, t.batch_size, shuffle=True, drop_last=True, seed=t.seed
    )
    channels_last = t.channels_last and run.device.type in ("cuda", "cpu")
    augment = AugmentPipeline.from_config(t, len(run.splits.classes), channels_last)
    stream = _finetune_batches(batches, t.seed, run.device)

    def step(lr: float) -> float:
        images, labels, generator = next(stream)
        set_lr(chosen.optimizer, lr)
        x, targets = augment(images, labels, generator)
        chosen.optimizer.zero_grad(set_to_none=True)
        meter = EpochMeter(run.device, run.dist, None)  # this step's loss alone
        forward_backward(chosen.step_model, x, targets, labels, meter, run)
        if t.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(run.model.parameters(), t.clip_grad_norm)
        chosen.optimizer.step()
        return float(meter.sums[0]) / max(meter.seen, 1)

    return step


def train_frozen_epochs(run: Run) -> int:
    """train.freeze_epochs epochs of the frozen phase's step at train.head_lr, as a run takes
    them before fine-tuning (the head trained, the backbone as it was); returns the steps."""
    t = run.cfg.train
    step = finetune_step(run, "frozen")
    steps = t.freeze_epochs * max(len(run.train_set) // t.batch_size, 1)
    for _ in range(steps):
        step(t.head_lr)
    return steps


def _finetune_batches(
    batches: DeviceBatches, seed: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Generator]]:
    """(images, labels, the epoch's augmentation generator), epoch after epoch, as fit draws."""
    epoch = 0
    while True:
        generator = seed_epoch(seed, epoch, 0, device)
        yield from ((x, y, generator) for x, y in batches.epoch(epoch))
        epoch += 1


def features_step(run: Run, progress: bool) -> Step:
    """Steps of features mode: the head alone on the cached features (computed first when the
    cache lacks them), train.optimizer at train.lr, as fit_features trains it."""
    t, model = run.cfg.train, run.model
    model.backbone.requires_grad_(False)
    feats = feature_source(run, progress)
    train_x = feats(run.train_set, "train", t.feature_flip).to(run.device)
    train_y = run.train_set.labels.repeat(2 if t.feature_flip else 1).to(run.device)
    optimizer = build_optimizer([model.head], t, "features")
    size = min(t.batch_size, len(train_y))
    stream = _feature_batches(len(train_y), size, t.seed)

    def step(lr: float) -> float:
        rows = next(stream).to(run.device)
        # One "epoch" of exactly one batch: head_training's own step, at this rate.
        stats = train_head_epoch(
            model.head, train_x[rows], train_y[rows], optimizer, size, t.label_smoothing,
            lr_fn=lambda _: lr,
        )  # fmt: skip
        return stats["train_loss"]

    return step


def _feature_batches(n: int, size: int, seed: int) -> Iterator[torch.Tensor]:
    """Row indices of full batches, reshuffled each epoch as fit_features shuffles."""
    epoch = 0
    while True:
        order = torch.randperm(n, generator=seed_epoch(seed, epoch))
        yield from (order[i * size : (i + 1) * size] for i in range(n // size))
        epoch += 1


@contextlib.contextmanager
def weights_restored(model: nn.Module) -> Iterator[None]:
    """Whatever happens inside (steps, an error, Ctrl-C), `model` leaves as it came: every
    parameter and buffer (batch-norm statistics too) bit for bit, which parameters train,
    which modules are in train mode, no gradients; and torch's random state."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trains = {name: p.requires_grad for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        model.load_state_dict(saved)
        for name, p in model.named_parameters():
            p.requires_grad_(trains[name])
            p.grad = None
        for name, m in model.named_modules():
            m.training = modes[name]
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
