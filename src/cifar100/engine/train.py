"""The training loop: head warm-up with a frozen backbone, then fine-tuning of all layers.

cifar100 train --preset seed                         # the report's model, the seed recipe
cifar100 train --resume runs/<run>                   # continue an interrupted run
torchrun --nproc_per_node=N -m cifar100 train ...    # DDP, one process per device
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cifar100.config import Config, validate
from cifar100.data import load_data, split_holdout
from cifar100.data.augment import augment_batch, to_float_nchw
from cifar100.data.loader import DeviceBatches
from cifar100.data.mixing import mix_batch
from cifar100.data.tensors import DataSplits, ImageSet, fine_to_coarse
from cifar100.engine import distributed, runs
from cifar100.engine.checkpoint import load_checkpoint, save_checkpoint
from cifar100.engine.distributed import DistInfo
from cifar100.engine.ema import ModelEMA
from cifar100.engine.optim import build_optimizer, finetune_lr, set_lr
from cifar100.engine.runtime import autocast, environment_info, seed_everything
from cifar100.errors import CheckpointError, CifarError, ConfigError
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


@dataclass
class Run:
    """Everything one training run holds, set up once by `_prepare`."""

    cfg: Config
    run_dir: Path
    device: torch.device
    dist: DistInfo
    splits: DataSplits
    train_set: ImageSet
    val_set: ImageSet
    model: nn.Module
    meta: dict[str, Any]
    cache: Path
    say: Any
    state: dict[str, Any] | None = None  # the checkpoint resumed from
    start_epoch: int = 0
    best: float = -1.0
    log: runs.MetricsLog | None = field(default=None, repr=False)
    ema: ModelEMA | None = field(default=None, repr=False)


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
    elif cfg is None:
        raise ConfigError("train() needs a config or a run directory to resume")
    validate(cfg)
    dist_info, device = distributed.init_distributed(cfg.train.device)
    try:
        if resume is None:
            run_dir = Path(out) if out else runs.new_run_dir(runs_root, cfg.preset)
            run_dir = distributed.broadcast_object(run_dir, dist_info)  # one name for all ranks
            runs.check_new_run_dir(run_dir)
        start = time.perf_counter()
        run = _prepare(cfg, run_dir, state, device, dist_info, cache_dir, progress)
        last = cfg.train.epochs
        if stop_after_epochs is not None:
            last = min(last, run.start_epoch + stop_after_epochs)
        if cfg.train.mode == "features":
            test = _fit_features(run, last, progress)
        else:
            _fit(run, last, progress)
            test = None
        if last < cfg.train.epochs:
            return TrainResult(run_dir, {}, last, time.perf_counter() - start)
        test = _final_test(run, test)
        wall = time.perf_counter() - start
        run.say(
            f"test top1 {test['top1']:.4f} top5 {test['top5']:.4f} "
            f"({len(run.splits.test)} images); this session {wall:.0f}s; run saved in {run_dir}"
        )
        return TrainResult(run_dir, test, cfg.train.epochs, wall)
    finally:
        distributed.shutdown(dist_info)


def _prepare(cfg, run_dir, state, device, dist_info, cache_dir, progress) -> Run:
    """Data, model and run directory; rank 0 alone writes."""
    t = cfg.train
    if t.batch_size % (dist_info.world * t.accumulate):
        raise ConfigError(
            f"train.batch_size={t.batch_size} (the global batch) must divide evenly into "
            f"{dist_info.world} processes x {t.accumulate} micro-batches"
        )
    seed_everything(t.seed, t.deterministic)
    say = _printer(progress and dist_info.is_main, dist_info.is_main)
    cache = resolve_cache_dir(cache_dir)
    splits = load_data(cfg.data, cache, seed=t.seed, progress=progress and dist_info.is_main)
    if cfg.data.val_fraction > 0:
        train_set, val_set = split_holdout(splits.train, cfg.data.val_fraction, t.seed)
    else:
        train_set, val_set = splits.train, splits.test
    init = _read_init(cfg, splits.classes) if cfg.model.init and state is None else None
    model = build_model(cfg.model, num_classes=len(splits.classes), cache_dir=cache)
    if init is not None:
        model.load_state_dict(init["model"])
    elif cfg.model.weights == "none" and t.freeze_epochs:
        say(f"note: weights=none, so the {t.freeze_epochs} frozen-backbone epochs are skipped")
        t.freeze_epochs = 0
    model.to(device)
    if t.channels_last and device.type in ("cuda", "cpu"):  # measured faster on both
        model.to(memory_format=torch.channels_last)
    meta = {
        "classes": splits.classes,
        "coarse_classes": splits.train.coarse_classes,
        "fine_to_coarse": fine_to_coarse(splits.train, splits.test),
        "image_size": train_set.image_size,
        "dataset": splits.name,
    }
    run = Run(cfg, run_dir, device, dist_info, splits, train_set, val_set, model, meta, cache, say)
    if state is None:
        if dist_info.is_main:
            env = environment_info(device)
            env.update(data=splits.info, data_source=splits.source, world_size=dist_info.world)
            runs.prepare_run_dir(run_dir, cfg, env)
    else:
        run.state = state
        model.load_state_dict(state["model"])
        run.start_epoch, run.best = int(state["epoch"]), float(state["best_val_top1"])
        if dist_info.is_main:
            runs.MetricsLog(run_dir / runs.METRICS).truncate_after(run.start_epoch)
        if run.start_epoch >= t.epochs:
            say(f"{run_dir}: all {t.epochs} epochs were already trained; evaluating")
    distributed.barrier(dist_info)
    run.log = runs.MetricsLog(run_dir / runs.METRICS)
    say(
        f"run {run_dir}: {cfg.preset} on {splits.name} ({len(train_set)} train, "
        f"{len(val_set)} val, {len(splits.test)} test), {device}"
        + (f" x {dist_info.world} processes" if dist_info.enabled else "")
    )
    return run


def _fit(run: Run, last_epoch: int, progress: bool) -> None:
    """The epochs: frozen head warm-up, then fine-tuning of every layer."""
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
        if run.state is not None and run.state.get("ema"):
            run.ema.load_state_dict(run.state["ema"])
    phase, optimizer, step_model = None, None, model
    for epoch in range(run.start_epoch, last_epoch):
        new_phase = "frozen" if epoch < t.freeze_epochs else "finetune"
        if new_phase != phase:
            phase = new_phase
            model.backbone.requires_grad_(phase == "finetune")
            optimizer = build_optimizer(
                [model.backbone, _non_backbone(model)], t, phase, [t.backbone_lr_scale, 1.0]
            )
            state = run.state
            if state is not None and state.get("phase") == phase and state["epoch"] == epoch:
                optimizer.load_state_dict(state["optimizer"])
            step_model = _wrap(model, run)  # DDP registers the parameters that train now
        epoch_start = time.perf_counter()
        stats = _train_epoch(
            step_model, model, batches, optimizer, run, epoch, phase, schedule, progress
        )
        _end_epoch(run, epoch, phase, stats, optimizer, epoch_start)


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


def _train_epoch(
    step_model,
    model,
    batches: DeviceBatches,
    optimizer,
    run: Run,
    epoch: int,
    phase: str,
    schedule: tuple[int, int],
    progress: bool,
) -> dict[str, float]:
    t, device, dist_info = run.cfg.train, run.device, run.dist
    model.train()
    if phase == "frozen":
        model.backbone.eval()  # Keras training=False: batch norm uses its moving statistics
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    # Seeded per epoch (and equal on every rank): a resumed run draws what an unbroken one did.
    gen = torch.Generator(device=gen_device).manual_seed(t.seed * 1_000_003 + epoch)
    torch.manual_seed(t.seed * 7_919 + epoch * 31 + dist_info.rank)  # dropout
    steps = len(batches)
    first_ft_step = (epoch - t.freeze_epochs) * steps
    totals = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, correct
    seen = 0
    bar = tqdm(
        total=steps,
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
    num_classes = len(run.meta["classes"])
    for i, (images, labels) in enumerate(batches.epoch(epoch)):
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
            totals += torch.stack(
                [loss.detach().double() * len(yc), (logits.detach().argmax(1) == yc).sum().double()]
            )
        if t.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad_norm)
        optimizer.step()
        if run.ema is not None:
            run.ema.update(model)
        seen += len(labels)
        bar.update(1)
        if (i + 1) % t.log_every == 0 or i + 1 == steps:
            mean_loss = float(totals[0]) / seen  # the only host synchronisation here
            if not math.isfinite(mean_loss):
                bar.close()
                raise TrainingError(
                    f"epoch {epoch + 1}, step {i + 1}: the loss is not finite; "
                    "lower train.lr (or head_lr) and try again"
                )
            rate = seen * dist_info.world / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(
                loss=f"{mean_loss:.4f}",
                img_s=f"{rate:.0f}",
                lr=f"{optimizer.param_groups[-1]['lr']:.2e}",
            )
    bar.close()
    elapsed = time.perf_counter() - start
    sums = torch.cat([totals, torch.tensor([float(seen)], dtype=torch.float64, device=device)])
    loss_sum, correct, seen = distributed.all_reduce_sum(sums, dist_info).tolist()
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_top1": correct / max(seen, 1),
        "lr": optimizer.param_groups[-1]["lr"],
        "images_per_s": seen / max(elapsed, 1e-9),
    }


def _end_epoch(
    run: Run, epoch: int, phase: str, stats: dict, optimizer, started: float, val=None
) -> None:
    """Validate (unless `val` is given), log and checkpoint (rank 0); the other ranks wait."""
    t = run.cfg.train
    if run.dist.is_main:
        if val is None:
            val = evaluate_model(run.model, run.val_set, run.device, t.eval_batch_size, t.amp)
        record = {
            "epoch": epoch + 1,
            "phase": phase,
            **stats,
            "val_loss": val["loss"],
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "epoch_s": round(time.perf_counter() - started, 2),
        }
        if run.ema is not None:
            ema = evaluate_model(run.ema.module, run.val_set, run.device, t.eval_batch_size, t.amp)
            record.update(val_loss_ema=ema["loss"], val_top1_ema=ema["top1"])
        run.log.append(record)
        run.say(
            f"epoch {epoch + 1}/{t.epochs} [{phase}] loss {stats['train_loss']:.4f} "
            f"acc {stats['train_top1']:.4f} | val loss {val['loss']:.4f} "
            f"top1 {val['top1']:.4f} top5 {val['top5']:.4f} | {record['epoch_s']:.1f}s "
            f"{stats['images_per_s']:.0f} img/s"
        )
        improved = val["top1"] > run.best
        run.best = max(run.best, val["top1"])
        ckpt = {
            "config": run.cfg.to_dict(),
            **run.meta,
            "model": run.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "phase": phase,
            "epoch": epoch + 1,
            "best_val_top1": run.best,
            "val_top1": val["top1"],
        }
        if run.ema is not None:
            ckpt["ema"] = run.ema.state_dict()
        save_checkpoint(ckpt, run.run_dir / "last.pt")
        if improved:
            save_checkpoint(ckpt, run.run_dir / "best.pt")
    distributed.barrier(run.dist)


def _final_test(run: Run, test: dict[str, Any] | None = None) -> dict[str, Any]:
    """Test metrics of the final weights (unless given), written to evaluation.json (rank 0)."""
    t = run.cfg.train
    if run.dist.is_main:
        test = test or evaluate_model(
            run.model,
            run.splits.test,
            run.device,
            t.eval_batch_size,
            t.amp,
            run.meta["fine_to_coarse"],
            run.meta["coarse_classes"],
        )
        if run.ema is not None:
            ema = evaluate_model(
                run.ema.module, run.splits.test, run.device, t.eval_batch_size, t.amp
            )
            test["ema"] = {k: ema[k] for k in ("loss", "top1", "top5")}
        write_json_atomic(
            run.run_dir / runs.EVALUATION,
            {
                "checkpoint": str(run.run_dir / "last.pt"),
                "epoch": t.epochs,
                "dataset": run.splits.name,
                **test,
            },
        )
    return distributed.broadcast_object(test or {}, run.dist)


def _fit_features(run: Run, last_epoch: int, progress: bool) -> dict[str, Any]:
    """Frozen-feature mode: the backbone runs once (cached), then the head trains on features.

    Returns the test metrics, computed from cached test features; the checkpoint is a normal
    full-model one (the trained head inside the pretrained model).
    """
    from cifar100.engine import features as fx
    from cifar100.evaluate import classification_metrics

    t, model = run.cfg.train, run.model
    if run.dist.enabled:
        raise ConfigError("train.mode=features runs in one process: start it without torchrun")
    model.backbone.requires_grad_(False)
    cache = fx.FeatureCache(run.cache)

    def feats(data: ImageSet, split: str, flip: bool = False) -> torch.Tensor:
        return fx.cached_features(
            model,
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

    train_x = feats(run.train_set, "train", t.feature_flip).to(run.device)
    train_y = run.train_set.labels.repeat(2 if t.feature_flip else 1).to(run.device)
    val_x, val_y = feats(run.val_set, "val"), run.val_set.labels
    optimizer = build_optimizer([model.head], t, "features")
    state = run.state
    if state is not None and state.get("phase") == "features":
        optimizer.load_state_dict(state["optimizer"])
    steps = len(train_y) // min(t.batch_size, len(train_y))
    total, warmup = t.epochs * steps, int(t.warmup_epochs * steps)
    for epoch in range(run.start_epoch, last_epoch):
        started = time.perf_counter()
        torch.manual_seed(t.seed * 7_919 + epoch * 31)  # dropout, as in fine-tuning
        gen = torch.Generator().manual_seed(t.seed * 1_000_003 + epoch)
        stats = fx.train_head_epoch(
            model.head, train_x, train_y, optimizer, t.batch_size, t.label_smoothing, gen,
            lr_fn=lambda step: finetune_lr(step, total, warmup, t.lr), step0=epoch * steps,
        )  # fmt: skip
        if not math.isfinite(stats["train_loss"]):
            raise TrainingError(f"epoch {epoch + 1}: the loss is not finite; lower train.lr")
        stats.pop("steps", None)
        val = fx.evaluate_head(model.head, val_x, val_y)
        _end_epoch(run, epoch, "features", stats, optimizer, started, val)
    if last_epoch < t.epochs:
        return {}
    logits = fx.head_logits(model.head, feats(run.splits.test, "test"))
    return classification_metrics(
        logits, run.splits.test.labels, run.splits.classes, run.meta["fine_to_coarse"],
        run.meta["coarse_classes"],
    )  # fmt: skip


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


def _printer(bars: bool, enabled: bool = True):
    def say(message: str) -> None:
        if not enabled:
            return
        if bars:
            tqdm.write(message, file=sys.stdout)
        else:
            print(message, flush=True)

    return say
