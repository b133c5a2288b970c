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

    def on_error(self, run: Run, error: BaseException) -> None:
        """This session ends with `error` (a callback's own included), raised on after this."""


class Callbacks(Callback):
    """Several callbacks called in order, on rank 0 only. Any object with some of Callback's
    methods will do (the trackers in cifar100.tracking are such objects)."""

    def __init__(self, callbacks: Sequence[Any] = (), enabled: bool = True):
        self.callbacks = list(callbacks) if enabled else []

    def _call(self, name: str, *args: Any) -> None:
        for c in self.callbacks:
            method = getattr(c, name, None)
            if method is not None:
                method(*args)

    def on_start(self, run: Run) -> None:
        self._call("on_start", run)

    def on_epoch(self, run: Run, record: dict[str, Any]) -> None:
        self._call("on_epoch", run, record)

    def on_end(self, run: Run, result: TrainResult) -> None:
        self._call("on_end", run, result)

    def on_error(self, run: Run, error: BaseException) -> None:
        self._call("on_error", run, error)
