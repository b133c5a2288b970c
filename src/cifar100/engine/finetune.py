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

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cifar100.data.augment import augment_batch, to_float_nchw
from cifar100.data.loader import DeviceBatches
from cifar100.data.mixing import mix_batch
from cifar100.engine import distributed
from cifar100.engine.ema import ModelEMA
from cifar100.engine.epoch_end import end_epoch, save_position
from cifar100.engine.interrupt import StepWatch
from cifar100.engine.optim import build_optimizer, set_lr
from cifar100.engine.run import Run
from cifar100.errors import TrainingError
from cifar100.runtime.device import autocast
from cifar100.schedule import finetune_lr


def fit(run: Run, last_epoch: int, progress: bool, watch: StepWatch) -> bool:
    """Train epochs start_epoch..last_epoch-1; True when it stopped early (position saved)."""
    t, model = run.cfg.train, run.model
    batches = DeviceBatches(
        run.train_set, run.device, t.batch_size, shuffle=True, drop_last=True, seed=t.seed
    )
    steps = len(batches)
    schedule = (
        (t.epochs - t.freeze_epochs) * steps,  # fine-tuning steps in all
        int(t.warmup_epochs * steps),
    )
    if t.ema_decay > 0:
        run.ema = ModelEMA(model, t.ema_decay)
        if run.state is not None and run.state.ema:
            run.ema.load_state_dict(run.state.ema)
    phase, optimizer, step_model = None, None, model
    with watch.signals:
        for epoch in range(run.start_epoch, last_epoch):
            new_phase = "frozen" if epoch < t.freeze_epochs else "finetune"
            if new_phase != phase:
                phase = new_phase
                model.backbone.requires_grad_(phase == "finetune")
                optimizer = build_optimizer(
                    [model.backbone, _non_backbone(model)], t, phase, [t.backbone_lr_scale, 1.0]
                )
                state = run.state
                if state is not None and state.phase == phase and state.epoch == epoch:
                    optimizer.load_state_dict(state.optimizer)
                step_model = _wrap(model, run)  # DDP registers the parameters that train now
            position = run.resume_position(epoch)
            started = time.perf_counter() - (position["elapsed"] if position else 0.0)
            stats = train_epoch(
                step_model, batches, optimizer, run, epoch, phase, schedule, progress, watch,
                position,
            )  # fmt: skip
            if stats is None:
                return True
            end_epoch(run, epoch, phase, stats, optimizer, started)
            if watch.after_epoch():
                return True
        return False


def _wrap(model: nn.Module, run: Run) -> nn.Module:
    """The module the steps call: DDP across ranks, compiled where asked."""
    step_model = model
    if run.dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

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
    step_model: nn.Module,
    batches: DeviceBatches,
    optimizer: torch.optim.Optimizer,
    run: Run,
    epoch: int,
    phase: str,
    schedule: tuple[int, int],
    progress: bool,
    watch: StepWatch,
    position: dict | None = None,
) -> dict[str, float] | None:
    """One epoch of steps (from `position` when resuming within it); None when stopped early."""
    t, device, dist_info, model = run.cfg.train, run.device, run.dist, run.model
    model.train()
    if phase == "frozen":
        model.backbone.eval()  # Keras training=False: batch norm uses its moving statistics
    elif t.finetune_bn == "frozen":
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()  # moving statistics, kept; its scale and offset still train
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    gen = torch.Generator(device=gen_device).manual_seed(t.seed * 1_000_003 + epoch)
    torch.manual_seed(t.seed * 7_919 + epoch * 31 + dist_info.rank)  # dropout
    # loss sum and correct predictions on the device, images seen on the host: this rank's,
    # plus (on rank 0) those of every rank before a resume
    sums = torch.zeros(2, device=device, dtype=torch.float64)
    seen, first, before = 0, 0, 0.0
    if position is not None:
        first, before = int(position["step"]), float(position["elapsed"])
        _restore_draws(position, gen, run)
        if dist_info.is_main:
            sums += position["sums"][:2].to(device)
            seen = int(position["sums"][2])
    steps = len(batches)
    first_ft_step = (epoch - t.freeze_epochs) * steps
    bar = tqdm(
        total=steps,
        initial=first,
        desc=f"epoch {epoch + 1}/{t.epochs}",
        unit="step",
        leave=False,
        disable=not (progress and dist_info.is_main),
        dynamic_ncols=True,
        file=sys.stderr,
    )
    start = time.perf_counter()
    channels_last = t.channels_last and device.type in ("cuda", "cpu")
    mine = distributed.local_slice(t.batch_size, dist_info)
    num_classes = len(run.info.classes)
    for i, (images, labels) in enumerate(batches.epoch(epoch, start=first), start=first):
        if phase == "finetune":
            set_lr(optimizer, finetune_lr(first_ft_step + i, *schedule, t.lr))
        # The whole global batch is augmented and mixed with the shared generator, then each
        # rank takes its slice: every rank agrees on what every image became.
        x = augment_batch(
            to_float_nchw(images, channels_last), t.crop_padding, t.flip, gen,
            policy=t.policy, magnitude=t.policy_magnitude, ops=t.policy_ops,
            erasing=t.random_erasing,
        )  # fmt: skip
        x, targets = mix_batch(
            x, labels, num_classes, t.mixup_alpha, t.cutmix_alpha, t.mix_prob,
            t.label_smoothing, gen,
        )  # fmt: skip
        x, targets, labels = x[mine], targets[mine], labels[mine]
        optimizer.zero_grad(set_to_none=True)
        chunks = zip(x.chunk(t.accumulate), targets.chunk(t.accumulate), labels.chunk(t.accumulate))
        for j, (xc, tc, yc) in enumerate(chunks):
            # Gradients are all-reduced once per step, after the last micro-batch.
            last = j == t.accumulate - 1
            sync = step_model.no_sync() if dist_info.enabled and not last else nullcontext()
            with sync:
                with autocast(device, t.amp):
                    logits = step_model(xc)
                loss = F.cross_entropy(logits.float(), tc)
                (loss / t.accumulate).backward()
            sums += torch.stack(
                [loss.detach().double() * len(yc), (logits.detach().argmax(1) == yc).sum().double()]
            )
            seen += len(yc)
        if t.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad_norm)
        optimizer.step()
        if run.ema is not None:
            run.ema.update(model)
        bar.update(1)
        logging_step = (i + 1) % t.log_every == 0 or i + 1 == steps
        if logging_step:
            rate = (i + 1 - first) * t.batch_size / (time.perf_counter() - start)  # all ranks
            _check_and_show(bar, sums, seen, optimizer, epoch, i, rate)
        save, stop = watch.after_step(logging_step)
        if save and i + 1 < steps:  # at the epoch's end, end_epoch saves
            elapsed = before + time.perf_counter() - start
            totals = torch.cat([sums, sums.new_tensor([seen])])
            save_position(run, optimizer, phase, epoch, i + 1, steps, gen, totals, elapsed)
            if stop:
                bar.close()
                return None
    bar.close()
    elapsed = time.perf_counter() - start
    totals = torch.cat([sums, sums.new_tensor([seen])])
    loss_sum, correct, seen = distributed.all_reduce_sum(totals, dist_info).tolist()
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_top1": correct / max(seen, 1),
        "lr": optimizer.param_groups[-1]["lr"],
        "images_per_s": (steps - first) * t.batch_size / max(elapsed, 1e-9),
    }


def _restore_draws(position: dict, gen: torch.Generator, run: Run) -> None:
    """The random state a stopped epoch had: its augmentation generator, this rank's RNG.

    Resumed on another kind of device or process count, the run goes on from the same step
    with fresh draws, and says so: it is then no longer bit for bit the unbroken run.
    """
    device, dist_info = run.device, run.dist
    try:
        gen.set_state(position["generator"])  # the global batch's draws, the same on every rank
    except RuntimeError:  # a CUDA generator's state on a CPU, or the reverse
        run.say("note: resumed on another kind of device, so augmentation draws differ from here")
    if len(position["rng"]) != dist_info.world:
        run.say(
            f"note: stopped with {len(position['rng'])} processes and resumed with "
            f"{dist_info.world}, so dropout draws differ from an unbroken run's until the "
            "epoch ends"
        )
        return
    torch.set_rng_state(position["rng"][dist_info.rank])
    if device.type == "cuda" and position.get("cuda_rng"):
        torch.cuda.set_rng_state(position["cuda_rng"][dist_info.rank], device)


def _check_and_show(bar, sums, seen, optimizer, epoch, i, rate) -> None:
    """The logging step's one host synchronisation: stop on a non-finite loss, show progress."""
    mean_loss = float(sums[0]) / max(seen, 1)
    if not math.isfinite(mean_loss):
        bar.close()
        raise TrainingError(
            f"epoch {epoch + 1}, step {i + 1}: the loss is not finite; "
            "lower train.lr (or head_lr) and try again"
        )
    lr = optimizer.param_groups[-1]["lr"]
    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}", lr=f"{lr:.2e}")
