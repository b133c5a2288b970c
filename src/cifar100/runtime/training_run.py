"""A training run as `cifar100.train` returns it: its files, its test metrics, its model.

    run = cifar100.train(preset="cpu-finetune", data="cifar-100-python.tar.gz")
    run.metrics.top1        # the test evaluation (evaluation.json), None while unfinished
    run.paths.report        # the run directory's files (RunDir)
    run.stopped_early       # train.early_stopping ended it (tested on the best epoch)
    run.model.predict(["cat.jpg"])[0].top   # the trained model, loaded on first use

A run stopped by Ctrl-C (or SIGTERM) comes back with `stopped` set and no metrics;
`cifar100.train(resume=run.paths.path)` continues it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from cifar100.runtime.evaluation import Evaluation
from cifar100.runtime.run_dir import RunDir
from cifar100.runtime.trained_model import TrainedModel, load


@dataclass
class TrainingRun:
    """One run directory after training: where it is, how it ended, what it scored."""

    paths: RunDir
    metrics: Evaluation | None  # the test evaluation of the tested weights; None: unfinished
    epochs: int  # whole epochs trained
    stopped: str | None = None  # why it stopped before its end, resumable: "SIGINT", ...
    early_stopping: dict[str, Any] | None = field(default=None)  # when and why, if it did
    saved_at: str = ""  # where last.pt stands when `stopped`

    @classmethod
    def read(cls, path: str | Path) -> TrainingRun:
        """The run at `path` as its files hold it (a finished run's evaluation.json)."""
        files = RunDir(path)
        metrics = Evaluation.read_if_usable(files.evaluation)
        epochs = len(files.read_metrics())
        return cls(files, metrics, epochs, early_stopping=metrics and metrics.early_stopping)

    @property
    def path(self) -> Path:
        return self.paths.path

    @property
    def finished(self) -> bool:
        """Trained to its end (or to early stopping) and tested."""
        return self.stopped is None and self.metrics is not None

    @property
    def stopped_early(self) -> bool:
        """train.early_stopping ended it: validation top-1 stopped improving."""
        return self.early_stopping is not None

    @property
    def checkpoint(self) -> str:
        """Which checkpoint holds the tested weights: best (train.final=best, the default, and
        after early stopping), else last."""
        return "best" if self.metrics and self.metrics.matches(self.paths.best) else "last"

    @cached_property
    def model(self) -> TrainedModel:
        """The trained model (the tested weights), loaded on first use."""
        return load(self.paths.path, checkpoint=self.checkpoint)

    def __repr__(self) -> str:
        if self.stopped:
            how = f"stopped by {self.stopped} at {self.saved_at or 'its last save'}"
        elif self.metrics is not None and self.metrics.top1 is not None:
            how = f"test top-1 {self.metrics.top1:.2%}"
        else:
            how = "not tested"
        early = f", stopped early after epoch {self.epochs}" if self.stopped_early else ""
        return f"TrainingRun({self.paths.path}, {self.epochs} epochs{early}, {how})"
