"""The training loop: head warm-up with a frozen backbone, then fine-tuning of all layers.

cifar100 train --preset seed              # the report's model, the seed recipe
cifar100 train --resume runs/<run>        # continue an interrupted run
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cifar100.config import Config, validate
from cifar100.data import load_data, split_holdout
from cifar100.data.augment import augment_batch, to_float_nchw
from cifar100.data.loader import DeviceBatches
from cifar100.data.tensors import fine_to_coarse
from cifar100.engine import runs
from cifar100.engine.checkpoint import load_checkpoint, save_checkpoint
from cifar100.engine.optim import build_optimizer, finetune_lr, set_lr
from cifar100.engine.runtime import autocast, environment_info, seed_everything, select_device
from cifar100.errors import CheckpointError, CifarError
from cifar100.evaluate import evaluate_model
from cifar100.fileio import write_json_atomic
from cifar100.models.registry import build_model
from cifar100.paths import resolve_cache_dir


class TrainingError(CifarError):
    """Training cannot go on (e.g. the loss became NaN)."""


@dataclass
class TrainResult:
    run_dir: Path
    test: dict[str, Any]
    epochs: int
    wall_s: float


def train(
    cfg: Config | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    runs_root: str | Path = "runs",
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """Train `cfg` into a new run directory, or continue the run at `resume`."""
    state = None
    if resume is not None:
        run_dir = Path(resume)
        cfg = runs.read_run_config(run_dir)
        state = load_checkpoint(run_dir / "last.pt")
    else:
        assert cfg is not None
        run_dir = Path(out) if out else runs.new_run_dir(runs_root, cfg.preset)
        runs.check_new_run_dir(run_dir)
    validate(cfg)
    t = cfg.train
    start = time.perf_counter()
    seed_everything(t.seed)
    device = select_device(t.device)
    say = _printer(progress)

    cache = resolve_cache_dir(cache_dir)
    splits = load_data(cfg.data, cache, seed=t.seed, progress=progress)
    if cfg.data.val_fraction > 0:
        train_set, val_set = split_holdout(splits.train, cfg.data.val_fraction, t.seed)
    else:
        train_set, val_set = splits.train, splits.test
    superclasses = fine_to_coarse(splits.train, splits.test)
    init = _read_init(cfg, splits.classes) if cfg.model.init and state is None else None
    model = build_model(cfg.model, num_classes=len(splits.classes), cache_dir=cache)
    if init is not None:
        model.load_state_dict(init["model"])
    elif cfg.model.weights == "none" and t.freeze_epochs:
        say(f"note: weights=none, so the {t.freeze_epochs} frozen-backbone epochs are skipped")
        t.freeze_epochs = 0
    model.to(device)
    if t.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    if state is None:
        runs.prepare_run_dir(
            run_dir,
            cfg,
            {**environment_info(device), "data": splits.info, "data_source": splits.source},
        )
        start_epoch, best = 0, -1.0
    else:
        model.load_state_dict(state["model"])
        start_epoch, best = int(state["epoch"]), float(state["best_val_top1"])
        runs.MetricsLog(run_dir / runs.METRICS).truncate_after(start_epoch)
        if start_epoch >= t.epochs:
            say(f"{run_dir}: all {t.epochs} epochs were already trained; evaluating")
    log = runs.MetricsLog(run_dir / runs.METRICS)
    say(
        f"run {run_dir}: {cfg.preset} on {splits.name} ({len(train_set)} train, "
        f"{len(val_set)} val, {len(splits.test)} test), {device}"
    )

    batches = DeviceBatches(
        train_set, device, t.batch_size, shuffle=True, drop_last=True, seed=t.seed
    )
    steps = len(batches)
    finetune_steps = (t.epochs - t.freeze_epochs) * steps
    warmup_steps = int(t.warmup_epochs * steps)
    meta = {
        "classes": splits.classes,
        "coarse_classes": splits.train.coarse_classes,
        "fine_to_coarse": superclasses,
        "image_size": train_set.image_size,
        "dataset": splits.name,
    }
    phase, optimizer = None, None
    last_epoch = min(t.epochs, start_epoch + stop_after_epochs) if stop_after_epochs else t.epochs
    for epoch in range(start_epoch, last_epoch):
        new_phase = "frozen" if epoch < t.freeze_epochs else "finetune"
        if new_phase != phase:
            phase = new_phase
            model.backbone.requires_grad_(phase == "finetune")
            optimizer = build_optimizer([model], t, phase)
            if state is not None and state.get("phase") == phase and state["epoch"] == epoch:
                optimizer.load_state_dict(state["optimizer"])
        epoch_start = time.perf_counter()
        stats = _train_epoch(
            model,
            batches,
            optimizer,
            cfg,
            device,
            epoch,
            phase,
            finetune_steps,
            warmup_steps,
            progress,
        )
        val = evaluate_model(model, val_set, device, t.eval_batch_size, t.amp)
        record = {
            "epoch": epoch + 1,
            "phase": phase,
            **stats,
            "val_loss": val["loss"],
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "epoch_s": round(time.perf_counter() - epoch_start, 2),
        }
        log.append(record)
        say(
            f"epoch {epoch + 1}/{t.epochs} [{phase}] loss {stats['train_loss']:.4f} "
            f"acc {stats['train_top1']:.4f} | val loss {val['loss']:.4f} "
            f"top1 {val['top1']:.4f} top5 {val['top5']:.4f} | {record['epoch_s']:.1f}s "
            f"{stats['images_per_s']:.0f} img/s"
        )
        improved = val["top1"] > best
        best = max(best, val["top1"])
        ckpt = {
            "config": cfg.to_dict(),
            **meta,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "phase": phase,
            "epoch": epoch + 1,
            "best_val_top1": best,
            "val_top1": val["top1"],
        }
        save_checkpoint(ckpt, run_dir / "last.pt")
        if improved:
            save_checkpoint(ckpt, run_dir / "best.pt")

    if last_epoch < t.epochs:
        return TrainResult(run_dir, {}, last_epoch, time.perf_counter() - start)
    test = evaluate_model(
        model,
        splits.test,
        device,
        t.eval_batch_size,
        t.amp,
        superclasses,
        splits.train.coarse_classes,
    )
    wall = time.perf_counter() - start
    write_json_atomic(
        run_dir / runs.EVALUATION,
        {"checkpoint": str(run_dir / "last.pt"), "epoch": t.epochs, "dataset": splits.name, **test},
    )
    say(
        f"test top1 {test['top1']:.4f} top5 {test['top5']:.4f} ({len(splits.test)} images); "
        f"this session {wall:.0f}s; run saved in {run_dir}"
    )
    return TrainResult(run_dir, test, t.epochs, wall)


def _train_epoch(
    model,
    batches: DeviceBatches,
    optimizer,
    cfg: Config,
    device: torch.device,
    epoch: int,
    phase: str,
    finetune_steps: int,
    warmup_steps: int,
    progress: bool,
) -> dict[str, float]:
    t = cfg.train
    model.train()
    if phase == "frozen":
        model.backbone.eval()  # Keras training=False: batch norm uses its moving statistics
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    gen = torch.Generator(device=gen_device).manual_seed(t.seed * 1_000_003 + epoch)
    torch.manual_seed(t.seed * 7_919 + epoch)  # dropout: same per epoch, so resume is exact
    steps = len(batches)
    first_ft_step = (epoch - t.freeze_epochs) * steps
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch + 1}/{t.epochs}",
        unit="step",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    start = time.perf_counter()
    channels_last = t.channels_last and device.type == "cuda"
    for i, (images, labels) in enumerate(batches.epoch(epoch)):
        if phase == "finetune":
            set_lr(optimizer, finetune_lr(first_ft_step + i, finetune_steps, warmup_steps, t.lr))
        x = augment_batch(to_float_nchw(images, channels_last), t.crop_padding, t.flip, gen)
        with autocast(device, t.amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=t.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(labels)
        seen += n
        loss_sum += loss.detach() * n
        correct += (logits.detach().argmax(1) == labels).sum()
        bar.update(1)
        if (i + 1) % t.log_every == 0 or i + 1 == steps:
            mean_loss = float(loss_sum) / seen  # the only host synchronisation in the loop
            if mean_loss != mean_loss or mean_loss == float("inf"):
                bar.close()
                raise TrainingError(
                    f"epoch {epoch + 1}, step {i + 1}: the loss is not finite; "
                    "lower train.lr (or head_lr) and try again"
                )
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(
                loss=f"{mean_loss:.4f}",
                img_s=f"{rate:.0f}",
                lr=f"{optimizer.param_groups[0]['lr']:.2e}",
            )
    bar.close()
    elapsed = time.perf_counter() - start
    return {
        "train_loss": float(loss_sum) / max(seen, 1),
        "train_top1": float(correct) / max(seen, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": seen / max(elapsed, 1e-9),
    }


def _read_init(cfg: Config, classes: list[str]) -> dict[str, Any]:
    """The checkpoint to start from; its model settings replace cfg.model's (they must fit)."""
    from cifar100.config import from_dict
    from cifar100.engine.checkpoint import resolve_checkpoint

    path = cfg.model.init
    init = load_checkpoint(resolve_checkpoint(path))
    if list(init["classes"]) != list(classes):
        raise CheckpointError(
            f"{path}: its {len(init['classes'])} classes differ from the data's "
            f"{len(classes)}; start from a model trained for the same classes"
        )
    cfg.model = from_dict(init["config"]).model
    cfg.model.init, cfg.model.weights = path, "none"  # the checkpoint supplies every weight
    return init


def _printer(enabled: bool):
    def say(message: str) -> None:
        if enabled:
            tqdm.write(message, file=sys.stdout)
        else:
            print(message, flush=True)

    return say
