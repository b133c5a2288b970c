"""Fine-tuning through the backbone: a frozen head warm-up, then every layer; the step loop.

Each step augments and mixes the whole global batch on the device with one generator seeded
per epoch, so every rank agrees on every image and a resumed run draws what an unbroken one
did. The only host synchronisation is at logging steps.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from cifar100.data.loader import DeviceBatches
from cifar100.data.pipeline import AugmentPipeline
from cifar100.engine import distributed
from cifar100.engine.ema import ModelEMA
from cifar100.engine.epoch_end import end_epoch, patience_spent, save_position
from cifar100.engine.epoch_meter import EpochMeter
from cifar100.engine.interrupt import StepWatch
from cifar100.engine.optim import build_optimizer, set_lr
from cifar100.engine.position import ResumePosition
from cifar100.engine.run import Run
from cifar100.engine.seeding import seed_epoch
from cifar100.errors import TrainingError
from cifar100.runtime.device import autocast
from cifar100.schedule import finetune_lr


@dataclass(frozen=True)
class EpochParts:
    """What every epoch of one fine-tuning run shares."""

    run: Run
    batches: DeviceBatches  # the training set, shuffled per epoch
    augment: AugmentPipeline
    schedule: tuple[int, int]  # fine-tuning steps in all, of which warm-up
    progress: bool  # show a progress bar (rank 0)
    watch: StepWatch  # after each step: save the position? stop?

    @property
    def steps(self) -> int:
        return len(self.batches)

    def lr(self, epoch: int, i: int) -> float:
        """The fine-tuning learning rate at step `i` of `epoch`."""
        t = self.run.cfg.train
        return finetune_lr((epoch - t.freeze_epochs) * self.steps + i, *self.schedule, t.lr)


@dataclass(frozen=True)
class Phase:
    """Epochs trained alike: "frozen" (the head alone, the backbone in inference mode) or
    "finetune" (every layer); each phase has its own optimizer."""

    name: str
    optimizer: torch.optim.Optimizer
    step_model: nn.Module  # what the steps call: DDP across ranks, compiled where asked


def fit(run: Run, last_epoch: int, progress: bool, watch: StepWatch) -> bool:
    """Train epochs start_epoch..last_epoch-1; True when it stopped early (position saved).

    train.early_stopping ends it sooner with False (a finished run; run.early_stop says why)."""
    t = run.cfg.train
    batches = DeviceBatches(
        run.train_set, run.device, t.batch_size, shuffle=True, drop_last=True, seed=t.seed
    )
    channels_last = t.channels_last and run.device.type in ("cuda", "cpu")
    augment = AugmentPipeline.from_config(t, len(run.info.classes), channels_last)
    steps = len(batches)
    schedule = ((t.epochs - t.freeze_epochs) * steps, int(t.warmup_epochs * steps))
    parts = EpochParts(run, batches, augment, schedule, progress, watch)
    if t.ema_decay > 0:
        run.ema = _resumed_ema(run)
    phase = None
    with watch.signals:
        for epoch in range(run.start_epoch, last_epoch):
            if patience_spent(run):
                break
            if phase is None or phase.name != phase_of(epoch, t.freeze_epochs):
                phase = start_phase(run, epoch)
            position = run.resume_position(epoch)
            started = time.perf_counter() - (position.elapsed if position else 0.0)
            stats = train_epoch(parts, phase, epoch, position)
            if stats is None:
                return True
            end_epoch(run, epoch, phase.name, stats, phase.optimizer, started)
            if watch.after_epoch():
                return True
        return False


def phase_of(epoch: int, freeze_epochs: int) -> str:
    """The phase `epoch` is in: the first freeze_epochs are the frozen warm-up."""
    return "frozen" if epoch < freeze_epochs else "finetune"


def start_phase(run: Run, epoch: int) -> Phase:
    """The phase `epoch` starts: what trains, its optimizer (resumed when the checkpoint
    stopped in it) and the module the steps call."""
    t, model = run.cfg.train, run.model
    name = phase_of(epoch, t.freeze_epochs)
    model.backbone.requires_grad_(name == "finetune")
    optimizer = build_optimizer(
        [model.backbone, _non_backbone(model)], t, name, [t.backbone_lr_scale, 1.0]
    )
    saved = run.optimizer_state(name, epoch)
    if saved is not None:
        optimizer.load_state_dict(saved)
    return Phase(name, optimizer, _wrap(model, run))  # DDP registers what trains now


def _resumed_ema(run: Run) -> ModelEMA:
    ema = ModelEMA(run.model, run.cfg.train.ema_decay)
    if run.state is not None and run.state.ema:
        ema.load_state_dict(run.state.ema)
    return ema


def _wrap(model: nn.Module, run: Run) -> nn.Module:
    """The module the steps call: DDP across ranks, compiled where asked."""
    step_model = model
    if run.dist.enabled:
        if run.cfg.train.sync_bn and run.device.type == "cuda":
            step_model = nn.SyncBatchNorm.convert_sync_batchnorm(step_model)
        ids = [run.device.index] if run.device.type == "cuda" else None
        step_model = DistributedDataParallel(step_model, device_ids=ids)
    if run.cfg.train.compile:
        step_model = torch.compile(step_model)
    return step_model


def _non_backbone(model: nn.Module) -> nn.Module:
    """The modules outside the backbone (the head), as one module for the optimizer."""
    return nn.ModuleList(m for name, m in model.named_children() if name != "backbone")


def train_epoch(
    parts: EpochParts, phase: Phase, epoch: int, position: ResumePosition | None = None
) -> dict[str, float] | None:
    """One epoch of steps (from `position` when resuming within it); None when stopped early."""
    run, t = parts.run, parts.run.cfg.train
    set_batchnorm_mode(run.model, "inference" if phase.name == "frozen" else t.finetune_bn)
    generator = seed_epoch(t.seed, epoch, run.dist.rank, run.device)
    if position is not None:
        position.restore(generator, run.dist, run.device, run.say)
    meter = EpochMeter(run.device, run.dist, position)
    bar = _progress_bar(parts, epoch, meter.first)
    mine = distributed.local_slice(t.batch_size, run.dist)
    batches = parts.batches.epoch(epoch, start=meter.first)
    for i, (images, labels) in enumerate(batches, start=meter.first):
        if phase.name == "finetune":
            set_lr(phase.optimizer, parts.lr(epoch, i))
        # The whole global batch is augmented and mixed with the shared generator, then each
        # rank takes its slice: every rank agrees on what every image became.
        x, targets = parts.augment(images, labels, generator)
        x, targets, labels = x[mine], targets[mine], labels[mine]
        phase.optimizer.zero_grad(set_to_none=True)
        forward_backward(phase.step_model, x, targets, labels, meter, run)
        if t.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(run.model.parameters(), t.clip_grad_norm)
        phase.optimizer.step()
        if run.ema is not None:
            run.ema.update(run.model)
        bar.update(1)
        logging_step = (i + 1) % t.log_every == 0 or i + 1 == parts.steps
        if logging_step:
            _check_and_show(bar, meter, phase.optimizer, epoch, i, t.batch_size)
        save, stop = parts.watch.after_step(logging_step)
        if save and i + 1 < parts.steps:  # at the epoch's end, end_epoch saves
            _save_position(parts, phase, epoch, i + 1, generator, meter)
            if stop:
                bar.close()
                return None
    bar.close()
    return meter.epoch_stats(phase.optimizer, parts.steps, t.batch_size)


def set_batchnorm_mode(model: nn.Module, mode: str) -> None:
    """Put `model` in train mode, with its backbone's batch norm as `mode` says:

    batch: batch statistics, the moving ones updated (plain train mode);
    frozen: the moving statistics, kept; their scale and offset still train (train.finetune_bn);
    inference: the whole backbone in inference mode (Keras training=False), as in the frozen
    phase.
    """
    if mode not in ("batch", "frozen", "inference"):
        raise ValueError(f"batch-norm mode {mode!r}: choose batch, frozen or inference")
    model.train()
    if mode == "inference":
        model.backbone.eval()
    elif mode == "frozen":
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def forward_backward(
    step_model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    meter: EpochMeter,
    run: Run,
) -> None:
    """The step's micro-batches (train.accumulate), their gradients summed; under DDP they
    are all-reduced once, after the last micro-batch."""
    t, n = run.cfg.train, run.cfg.train.accumulate
    for j, (xc, tc, yc) in enumerate(zip(x.chunk(n), targets.chunk(n), labels.chunk(n))):
        defer = run.dist.enabled and j != n - 1
        with step_model.no_sync() if defer else nullcontext():
            with autocast(run.device, t.amp):
                logits = step_model(xc)
            loss = F.cross_entropy(logits.float(), tc)
            (loss / n).backward()
        meter.add(loss, logits, yc)


def _save_position(
    parts: EpochParts,
    phase: Phase,
    epoch: int,
    step: int,
    generator: torch.Generator,
    meter: EpochMeter,
) -> None:
    """Checkpoint the run `step` steps into `epoch` (every rank; rank 0 writes)."""
    run = parts.run
    elapsed, totals = meter.elapsed(), meter.totals()
    save_position(
        run, phase.optimizer, phase.name, epoch, step, parts.steps, generator, totals, elapsed
    )


def _progress_bar(parts: EpochParts, epoch: int, first: int) -> tqdm:
    run = parts.run
    return tqdm(
        total=parts.steps,
        initial=first,
        desc=f"epoch {epoch + 1}/{run.cfg.train.epochs}",
        unit="step",
        leave=False,
        disable=not (parts.progress and run.dist.is_main),
        dynamic_ncols=True,
        file=sys.stderr,
    )


def _check_and_show(bar, meter: EpochMeter, optimizer, epoch: int, i: int, batch_size: int) -> None:
    """The logging step's one host synchronisation: stop on a non-finite loss, show progress."""
    mean_loss = float(meter.sums[0]) / max(meter.seen, 1)
    if not math.isfinite(mean_loss):
        bar.close()
        raise TrainingError(
            f"epoch {epoch + 1}, step {i + 1}: the loss is not finite; "
            "lower train.lr (or head_lr) and try again"
        )
    rate = meter.images_per_s(i + 1, batch_size)  # all ranks' images
    lr = optimizer.param_groups[-1]["lr"]
    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}", lr=f"{lr:.2e}")
