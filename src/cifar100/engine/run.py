"""One training run's state, shared by the fine-tuning and frozen-feature loops."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifar100.config import Config
from cifar100.data.tensors import DataSplits, ImageSet
from cifar100.engine.distributed import DistInfo
from cifar100.engine.ema import ModelEMA
from cifar100.engine.position import ResumePosition
from cifar100.runtime.checkpoint import Checkpoint
from cifar100.runtime.model_info import ModelInfo
from cifar100.runtime.run_dir import MetricsLog, RunDir


@dataclass
class TrainResult:
    run_dir: Path
    test: dict[str, Any]  # empty unless every epoch was trained
    epochs: int  # epochs completed
    wall_s: float
    stopped: str | None = None  # why it stopped early: "SIGINT", "SIGTERM" or a limit's name
    saved_at: str = ""  # where last.pt stands, e.g. "epoch 3, step 120 of 390"
    # train.early_stopping ended it (a finished run, tested on its best epoch): when and why
    early_stop: dict[str, Any] | None = None
    # the weights its test used (train.final): weights "best" or "last", epoch, best_val_top1
    final: dict[str, Any] | None = None


@dataclass
class Run:
    """Everything one training run holds, set up once by `train._prepare`."""

    cfg: Config
    run_dir: Path
    device: torch.device
    dist: DistInfo
    splits: DataSplits
    train_set: ImageSet
    val_set: ImageSet
    model: nn.Module
    info: ModelInfo  # what the model is (classes, image size, settings): in every checkpoint
    cache: Path
    say: Any
    state: Checkpoint | None = None  # the checkpoint resumed from
    start_epoch: int = 0
    best: float = -1.0
    best_epoch: int = 0  # the epoch whose weights best.pt holds (0: none yet, or not known)
    log: MetricsLog | None = field(default=None, repr=False)
    ema: ModelEMA | None = field(default=None, repr=False)
    epochs_done: int = 0
    saved_at: str = ""  # where last.pt stands, for messages
    early_stop: dict[str, Any] | None = None  # set when train.early_stopping ends the run
    final: dict[str, Any] | None = None  # the tested weights (epoch_end.use_final_weights)
    wall_before: float = 0.0  # seconds the run took in earlier sessions (before a resume)
    session_start: float = field(default_factory=time.perf_counter)
    threads_fitted: float = field(default_factory=time.perf_counter)  # when last fitted
    callbacks: Any = field(default=None, repr=False)  # engine.callbacks.Callbacks (rank 0's)

    @property
    def files(self) -> RunDir:
        """The run directory's files (last.pt, best.pt, evaluation.json, ...)."""
        return RunDir(self.run_dir)

    def wall_s(self) -> float:
        """Seconds the run has taken in all, every session's set-up and evaluation included."""
        return self.wall_before + time.perf_counter() - self.session_start

    def resume_position(self, epoch: int) -> ResumePosition | None:
        """The saved mid-epoch position when `epoch` is the one the run was stopped in."""
        if self.state is None or epoch != self.start_epoch:
            return None
        return ResumePosition.from_checkpoint(self.state)

    def optimizer_state(self, phase: str, epoch: int) -> dict[str, Any] | None:
        """The saved optimizer state, when the checkpoint stopped in `phase` before `epoch`
        (or within it); None otherwise: a new phase starts a new optimizer."""
        state = self.state
        if state is None or state.phase != phase or state.epoch != epoch:
            return None
        return state.optimizer
