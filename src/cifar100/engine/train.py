"""Training runs: set up data, model and run directory, then fine-tune or fit on features.

cifar100 train --preset seed                         # the report's model, the seed recipe
cifar100 train --resume runs/<run>                   # continue a stopped or crashed run
torchrun --nproc_per_node=N -m cifar100 train ...    # DDP, one process per device

Ctrl-C (or SIGTERM from a scheduler) during the epochs saves the exact position, mid-epoch
too, and stops; train.checkpoint_minutes also saves it on a timer. --resume continues bit
for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from cifar100.config import Config, validate
from cifar100.cpu_threads import fit_threads
from cifar100.data import load_data, split_holdout
from cifar100.data.tensors import DataSplits, ImageSet, fine_to_coarse
from cifar100.display_text import visible
from cifar100.engine import distributed
from cifar100.engine.callbacks import Callback, Callbacks
from cifar100.engine.epoch_end import final_test, restore_best, use_final_weights
from cifar100.engine.finetune import fit
from cifar100.engine.head_training import fit_features
from cifar100.engine.interrupt import SignalStop, StepWatch
from cifar100.engine.recipe import adapt
from cifar100.engine.run import Run, TrainResult
from cifar100.engine.run_lock import RunLock
from cifar100.engine.seeding import seed_everything
from cifar100.errors import CheckpointError, ConfigError, WriteError
from cifar100.models.registry import build_model
from cifar100.paths import resolve_cache_dir
from cifar100.runtime import run_dir as runs
from cifar100.runtime.checkpoint import Checkpoint, load_weights
from cifar100.runtime.device import environment_info, tune_backends
from cifar100.runtime.model_info import ModelInfo
from cifar100.runtime.run_dir import RunDir
from cifar100.runtime.trained_model import load
from cifar100.tracking import trackers_for


def train(
    cfg: Config | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    runs_root: str | Path = "runs",
    stop_after_epochs: int | None = None,
    stop_after_steps: int | None = None,
    before_epochs: Callable[[Config], None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train `cfg` into a new run directory, or continue the run at `resume`.

    before_epochs: called with the config once a new run is set up (its data read, its model
    built: the user's inputs checked), before its first epoch, on rank 0 (the CLI's estimate).

    callbacks: watch the run on rank 0 (engine.callbacks: trackers, a search's pruner).

    A run stopped early (a signal, or stop_after_*) returns with `stopped` set and its
    position in last.pt; test metrics come only when every epoch is done.
    """
    if resume is not None:
        run_dir = Path(resume)
        cfg = runs.read_run_config(run_dir)
    elif cfg is None:
        raise ConfigError("train() needs a config or a run directory to resume")
    validate(cfg)
    # The [track] settings' trackers first: a missing library is one line before any writing.
    callbacks = [*trackers_for(cfg), *callbacks]
    dist_info, device = distributed.init_distributed(cfg.train.device)
    lock = None
    try:
        if resume is None:
            run_dir = Path(out) if out else runs.new_run_dir(runs_root, cfg.preset)
            run_dir = distributed.broadcast_object(run_dir, dist_info)  # one name for all ranks
            runs.check_new_run_dir(run_dir)
        lock = _lock(run_dir, dist_info)
        state, restart = None, False
        if resume is not None:
            # No checkpoint yet (stopped, or its first save failed): start it again in place.
            restart = runs.never_checkpointed(run_dir)
            if not restart and not RunDir(run_dir).last.is_file():
                raise CheckpointError(
                    f"{run_dir}: no last.pt to continue from, but a best.pt: copy best.pt to "
                    "last.pt to go on from the best epoch, or start a new run"
                )
            state = None if restart else Checkpoint.load(RunDir(run_dir).last)
        return _run(cfg, run_dir, state, device, dist_info, cache_dir, progress, restart,
                    stop_after_epochs, stop_after_steps, before_epochs, callbacks)  # fmt: skip
    except WriteError as e:
        files = RunDir(run_dir)
        if not files.is_run():
            raise
        kept = (
            "the run keeps its last good checkpoint: continue with"
            if files.last.is_file()
            else "no checkpoint was written yet:"
        )
        raise WriteError(
            f"{e}; {kept} `cifar100 train --resume {run_dir}`"
            + ("" if files.last.is_file() else " starts it again")
        ) from e
    finally:
        if lock is not None:
            lock.release()
        distributed.shutdown(dist_info)


def _lock(run_dir: Path, dist_info) -> RunLock | None:
    """Rank 0 locks the run directory; every rank learns whether it could."""
    lock, refused = None, None
    if dist_info.is_main:
        try:
            lock = RunLock(run_dir).acquire()
        except CheckpointError as e:
            refused = str(e)
    refused = distributed.broadcast_object(refused, dist_info)
    if refused:
        raise CheckpointError(refused)
    return lock


def _run(cfg, run_dir, state, device, dist_info, cache_dir, progress, restart,
         stop_after_epochs, stop_after_steps, before_epochs, callbacks) -> TrainResult:  # fmt: skip
    start = time.perf_counter()
    run = _prepare(cfg, run_dir, state, device, dist_info, cache_dir, progress, restart)
    if before_epochs is not None and state is None and dist_info.is_main:
        before_epochs(cfg)
    run.callbacks = Callbacks(callbacks, enabled=dist_info.is_main)
    run.callbacks.on_start(run)
    try:
        result = _epochs(run, cfg, run_dir, start, dist_info, device, progress,
                         stop_after_epochs, stop_after_steps)  # fmt: skip
    except BaseException as e:
        run.callbacks.on_error(run, e)
        raise
    run.callbacks.on_end(run, result)
    return result


def _epochs(run, cfg, run_dir, start, dist_info, device, progress,
            stop_after_epochs, stop_after_steps) -> TrainResult:  # fmt: skip
    run.session_start = start  # data loading and model set-up count too
    last = cfg.train.epochs
    if stop_after_epochs is not None:
        last = min(last, run.start_epoch + stop_after_epochs)
    # Entered by the loops around their epochs only: Ctrl-C during data loading or feature
    # extraction stops at once (both resume from their caches).
    signals = SignalStop(quiet=not dist_info.is_main)
    watch = StepWatch(signals, cfg.train.checkpoint_minutes, dist_info, device, stop_after_steps)
    if cfg.train.mode == "features":
        logits = fit_features(run, last, progress, watch)
        stopped = logits is None
    else:
        logits, stopped = None, fit(run, last, progress, watch)
    if stopped or (last < cfg.train.epochs and run.early_stop is None):
        reason = watch.reason or "stop_after_epochs"
        wall = time.perf_counter() - start
        return TrainResult(run_dir, {}, run.epochs_done, wall, reason, run.saved_at)
    use_final_weights(run)  # train.final: best.pt's weights unless the last are asked for
    test = final_test(run, logits)
    wall = time.perf_counter() - start
    top5 = f", top-5 {test['top5']:.2%}" if test.get("top5") is not None else ""
    run.say(
        f"test top-1 {test['top1']:.2%}{top5} ({len(run.splits.test)} images); this session "
        f"{wall:.0f} s; run saved in {run_dir} (cifar100 report {run_dir} for its page)"
    )
    return TrainResult(run_dir, test, run.epochs_done, wall, early_stop=run.early_stop,
                       final=run.final)  # fmt: skip


def _prepare(cfg, run_dir, state, device, dist_info, cache_dir, progress, restart) -> Run:
    """Data, model and run directory; rank 0 alone writes."""
    t = cfg.train
    if t.batch_size % (dist_info.world * t.accumulate):
        raise ConfigError(
            f"train.batch_size={t.batch_size} (the global batch) must divide evenly into "
            f"{dist_info.world} processes x {t.accumulate} micro-batches"
        )
    say = _printer(progress and dist_info.is_main, dist_info.is_main)
    cache = resolve_cache_dir(cache_dir)
    splits, train_set, val_set, model = data_and_model(
        cfg, device, cache, progress, say, dist_info, fresh=state is None
    )
    if state is not None:
        _check_same_exclusions(run_dir, splits.info.get("excluded"))
    if t.sync_bn and dist_info.enabled and device.type != "cuda":
        say(
            "note: train.sync_bn needs CUDA (PyTorch's SyncBatchNorm); batch norm stays per process"
        )
    info = ModelInfo(
        config=cfg,
        classes=splits.classes,
        image_size=train_set.image_size,
        dataset=splits.name,
        coarse_classes=splits.train.coarse_classes,
        fine_to_coarse=fine_to_coarse(splits.train, splits.test),
    )
    run = Run(cfg, run_dir, device, dist_info, splits, train_set, val_set, model, info, cache, say)
    if state is None:
        if dist_info.is_main:
            env = environment_info(device)
            env.update(data=splits.info, data_source=splits.source, world_size=dist_info.world)
            runs.prepare_run_dir(run_dir, cfg, env, replace=restart)
        if restart:
            say(f"{run_dir} has no checkpoint to continue from: starting it again")
    else:
        run.state = state
        if state.threads and device.type == "cpu" and not dist_info.enabled:
            fit_threads(keep=state.threads)  # as it went on computing, where the cores allow
        load_weights(model, state.model, run.files.last)
        run.start_epoch, run.best = int(state.epoch), float(state.best_val_top1)
        run.best_epoch = state.recorded_best_epoch()
        if dist_info.is_main:
            restore_best(run, state)
        run.epochs_done = run.start_epoch
        run.wall_before = float(state.wall_s or 0.0)
        position = run.resume_position(run.start_epoch)
        if position is not None:
            say(f"resuming epoch {run.start_epoch + 1} at step {position.step}")
        if dist_info.is_main:
            run.files.metrics_log().truncate_after(run.start_epoch)
        if run.start_epoch >= t.epochs:
            say(f"{run_dir}: all {t.epochs} epochs were already trained; evaluating")
    distributed.barrier(dist_info)
    run.log = run.files.metrics_log()
    say(
        f"run {run_dir}: {cfg.preset} on {splits.name} ({len(train_set)} train, "
        f"{len(val_set)} val, {len(splits.test)} test), {device}"
        + (f" x {dist_info.world} processes" if dist_info.enabled else "")
    )
    return run


def data_and_model(
    cfg: Config,
    device: torch.device,
    cache: Path,
    progress: bool,
    say: Callable[[str], None],
    dist_info: distributed.DistInfo | None = None,
    fresh: bool = True,
) -> tuple[DataSplits, ImageSet, ImageSet, torch.nn.Module]:
    """Seeded, the data (splits, train, validation) and the model on `device` as a run's first
    epoch would find it: the backbone's weights (or model.init's when `fresh`) and a new head.
    Writes nothing (lr-find builds its model here too)."""
    t, dist_info = cfg.train, dist_info or distributed.DistInfo()
    seed_everything(t.seed, t.deterministic)
    tune_backends(device, t.deterministic)
    # Every rank loads the data; rank 0 alone says what it found (skipped files, warnings).
    others = contextlib.redirect_stderr(io.StringIO())
    with contextlib.nullcontext() if dist_info.is_main else others:
        splits = load_data(cfg.data, cache, seed=t.seed, progress=progress and dist_info.is_main)
    if cfg.data.val_fraction > 0:
        train_set, val_set = split_holdout(splits.train, cfg.data.val_fraction, t.seed)
    else:
        train_set, val_set = splits.train, splits.test
    if fresh and cfg.recipe is None:  # a new run: the recipe fitted to its data (train.adapt)
        recipe = adapt(cfg, len(train_set), len(splits.classes))
        for line in recipe.lines() if recipe else []:
            say(line)
        validate(cfg)
    init = _read_init(cfg, splits.classes) if cfg.model.init and fresh else None
    model = build_model(cfg.model, num_classes=len(splits.classes), cache_dir=cache)
    if init is not None:
        load_weights(model, init, cfg.model.init)
    elif cfg.model.weights == "none" and t.freeze_epochs:
        say(f"note: weights=none, so the {t.freeze_epochs} frozen-backbone epochs are skipped")
        t.freeze_epochs = 0
    model.to(device)
    if t.channels_last and device.type in ("cuda", "cpu"):  # measured faster on both
        model.to(memory_format=torch.channels_last)
    return splits, train_set, val_set, model


def _check_same_exclusions(run_dir: Path, now: dict | None) -> None:
    """A resumed run leaves out the images it began without: its data.exclude file unchanged."""
    data = (RunDir(run_dir).read_environment() or {}).get("data")
    began = data.get("excluded") if isinstance(data, dict) else None
    if isinstance(began, dict) and now and began.get("sha256") != now["sha256"]:
        raise ConfigError(
            f"{now['file']} (data.exclude) changed since {run_dir} began: resuming would train "
            "on other images; put the file back as it was, or start a new run with it"
        )


def _read_init(cfg: Config, classes: list[str]) -> dict[str, Any]:
    """The weights to start from (a run, checkpoint or safetensors export); their model
    settings replace cfg.model's (they must fit)."""
    path = cfg.model.init
    init = load(path, device="cpu")
    if init.module is None:
        raise ConfigError(
            f"{path}: an ONNX export cannot be trained on; start from its run, checkpoint or "
            "safetensors export"
        )
    if list(init.classes) != list(classes):
        raise CheckpointError(
            f"{path}: its {len(init.classes)} classes differ from the data's "
            f"{len(classes)}; start from a model trained for the same classes"
        )
    cfg.model = dataclasses.replace(init.info.model, init=path, weights="none")
    return init.module.state_dict()


def _printer(bars: bool, enabled: bool = True):
    def say(message: str) -> None:
        if not enabled:
            return
        # Paths and names shown, not obeyed: a right-to-left override in a folder name would
        # reorder the line (display_text.visible).
        message = visible(message)
        if bars:
            tqdm.write(message, file=sys.stdout)
        else:
            print(message, flush=True)

    return say
