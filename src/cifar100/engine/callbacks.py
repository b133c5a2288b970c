"""Callbacks: code that watches a training run from outside the engine (experiment trackers,
a hyper-parameter search's pruner), called on rank 0 only.

    class Report(Callback):
        def on_epoch(self, run, record):
            print(record["epoch"], record["val_top1"])

    train(cfg, callbacks=[Report()])

Every method is optional. on_epoch gets each epoch's metrics record as metrics.jsonl holds
it, after the epoch's checkpoint is saved: an exception raised there ends the run at once
(a search's pruning does so), and `--resume` would continue it from that epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cifar100.engine.run import Run, TrainResult


class Callback:
    def on_start(self, run: Run) -> None:
        """The run is set up (data read, model built, run directory written), new or resumed,
        before its first epoch in this session."""

    def on_epoch(self, run: Run, record: dict[str, Any]) -> None:
        """An epoch ended: `record` is its line of metrics.jsonl."""

    def on_end(self, run: Run, result: TrainResult) -> None:
        """This session ended: the run finished (result.test holds the final test) or was
        stopped (result.stopped says why)."""


class Callbacks(Callback):
    """Several callbacks called in order, on rank 0 only."""

    def __init__(self, callbacks: Sequence[Callback] = (), enabled: bool = True):
        self.callbacks = list(callbacks) if enabled else []

    def on_start(self, run: Run) -> None:
        for c in self.callbacks:
            c.on_start(run)

    def on_epoch(self, run: Run, record: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_epoch(run, record)

    def on_end(self, run: Run, result: TrainResult) -> None:
        for c in self.callbacks:
            c.on_end(run, result)
