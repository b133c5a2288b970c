"""One trial of a search: its settings drawn, a normal training run in OUT/trial-NNNN, pruned
on its per-epoch validation top-1, valued at the validation top-1 of the weights it tests (its
best epoch's, or with train.final=last its last epoch's)."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cifar100.config import Config
from cifar100.engine.callbacks import Callback
from cifar100.engine.train import train
from cifar100.errors import CifarError, ConfigError, TrainingError
from cifar100.tune.space import Space

RUN_DIR = "run_dir"  # the trial's user attrs: where its run directory is
TEST_TOP1 = "test_top1"  # the run's own final test (the search never looks at it)
ERROR = "error"  # why a trial failed
INTERRUPTED = "interrupted"  # stopped by Ctrl-C / SIGTERM: failed, its settings queued again


class Pruning(Callback):
    """Report each epoch's validation top-1 to the trial; end the run when the pruner says."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.best: float | None = None
        self.last: float | None = None

    def on_epoch(self, run: Any, record: dict[str, Any]) -> None:
        value = float(record["val_top1"])
        self.best = value if self.best is None else max(self.best, value)
        self.last = value
        # The frozen-backbone warm-up is not reported: its head trains at train.head_lr, so
        # what the search is after (train.lr, the fine-tuning settings) has not acted yet; and
        # Optuna's median pruner compares a trial's best value so far, so a good warm-up
        # epoch would shield a run that fine-tuning then ruins (measured: docs/results.md).
        if record.get("phase") == "frozen":
            return
        self.trial.report(value, int(record["epoch"]))
        # Never at the last epoch: the run is trained by then, and its value is the result.
        last = int(record["epoch"]) >= run.cfg.train.epochs
        if not last and self.trial.should_prune():
            run.say(f"trial {self.trial.number} pruned at epoch {record['epoch']} "
                    f"(validation top-1 {value:.2%})")  # fmt: skip
            raise optuna.TrialPruned(f"epoch {record['epoch']}: val_top1 {value:.4f}")


@dataclass
class Outcome:
    """How a trial ended: the state to tell Optuna, its value, and whether to stop searching."""

    state: TrialState
    value: float | None = None
    stop: str | None = None  # "interrupted", or the error that every trial would meet


def trial_dir(out: Path, number: int) -> Path:
    return out / f"trial-{number:04d}"


def run_trial(
    trial: optuna.Trial,
    base: Config,
    space: Space,
    out: Path,
    cache_dir: str | Path | None,
    progress: bool,
) -> Outcome:
    """Train one trial's settings; never raises for the trial's own failure."""
    run_dir = trial_dir(out, trial.number)
    trial.set_user_attr(RUN_DIR, str(run_dir))
    for said in (INTERRUPTED, ERROR):  # a retry's copies of the failed trial's attributes
        if trial.user_attrs.get(said):
            trial.set_user_attr(said, None)
    pruning = Pruning(trial)
    try:
        cfg = space.apply(base, space.suggest(trial))
        print(f"trial {trial.number}: {_settings_text(trial.params)} -> {run_dir}", flush=True)
        result = train(cfg, out=run_dir, cache_dir=cache_dir, progress=progress,
                       callbacks=[pruning])  # fmt: skip
    except optuna.TrialPruned:
        return Outcome(TrialState.PRUNED)
    except KeyboardInterrupt:  # a second Ctrl-C, or one during data loading
        trial.set_user_attr(INTERRUPTED, True)
        return Outcome(TrialState.FAIL, stop=INTERRUPTED)
    except (ConfigError, TrainingError) as e:  # these settings (a NaN loss): the next ones may do
        trial.set_user_attr(ERROR, str(e))
        print(f"trial {trial.number} failed: {e}", file=sys.stderr, flush=True)
        return Outcome(TrialState.FAIL)
    except CifarError as e:  # data, files, disk: every trial would meet it
        trial.set_user_attr(ERROR, str(e))
        return Outcome(TrialState.FAIL, stop=str(e))
    if result.stopped:  # the engine saved the run where the signal found it
        trial.set_user_attr(INTERRUPTED, True)
        return Outcome(TrialState.FAIL, stop=INTERRUPTED)
    if pruning.best is None:  # no epoch ran in this session: nothing to value it by
        trial.set_user_attr(ERROR, "no epoch was trained")
        return Outcome(TrialState.FAIL)
    trial.set_user_attr(TEST_TOP1, result.test.get("top1"))
    trial.set_user_attr("wall_s", round(result.wall_s, 2))
    # The value is that of the weights the run tests and delivers (train.final): best.pt's, its
    # best epoch's validation top-1 over every session, or with --final last its last epoch's.
    final = result.final or {}
    if final.get("weights") == "best" and final.get("best_val_top1") is not None:
        return Outcome(TrialState.COMPLETE, float(final["best_val_top1"]))
    return Outcome(TrialState.COMPLETE, pruning.last)


def _settings_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())  # fmt: skip


class Heartbeat:
    """Writes a running trial's heartbeat to the storage, so that another worker can tell a
    crashed one's trial (silent past the grace period) and queue it again."""

    def __init__(self, storage: Any, trial: optuna.Trial, every_s: float) -> None:
        # The trial's storage id (Optuna's own loop passes it so, too)
        self.storage, self.trial_id, self.every_s = storage, trial._trial_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while True:
            self.storage.record_heartbeat(self.trial_id)
            if self._stop.wait(self.every_s):
                return
