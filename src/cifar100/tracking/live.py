"""MLflow tracking as training goes: a training callback (engine/callbacks.py) over MlflowLog.

A tracker that fails never stops the run: the first failure is one warning line, nothing more
is sent this session, and tracking.json remembers what is missing for `cifar100 track`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from cifar100.tracking.mlflow_log import MlflowLog, require_mlflow


class MlflowTracker:
    def __init__(self, uri: str, experiment: str) -> None:
        require_mlflow()
        self.uri, self.experiment = uri, experiment
        self.log: MlflowLog | None = None
        self.failed = False

    def on_start(self, run) -> None:
        def start() -> None:
            self.log = MlflowLog(run.run_dir, self.uri, self.experiment)
            self.log.start()
            self.log.log_params()

        if self._try(run, "the run's start", start):
            run.say(f"tracking: {self.log.where()}")

    def on_epoch(self, run, record: dict) -> None:
        self._try(run, f"epoch {record['epoch']}", lambda: self.log.log_epoch(record))

    def on_end(self, run, result) -> None:
        if not result.test:  # stopped: continued by --resume, into the same tracked run
            self._try(run, "the stop", lambda: self.log.pause())
            return
        _write_report(run)
        info = run.info
        self._try(
            run,
            "the final results",
            lambda: self.log.log_final(run.model, info.image_size, info.classes),
        )

    def on_error(self, run, error: BaseException) -> None:
        """The session ends with an error (a pruned trial, a NaN loss, a full disk)."""
        if self.log is not None and self.log.state.run_id is not None:
            self._try(run, "the error", lambda: self.log.pause("FAILED"))

    def _try(self, run, what: str, step: Callable[[], None]) -> bool:
        if self.failed:
            self._save(run)  # what is missing grows with the run
            return False
        try:
            step()
            return True
        except Exception as e:  # noqa: BLE001 - a tracker that fails must not stop training
            self.failed = True
            error = _one_line(e)
            if self.log is not None:
                self.log.state.error = error
            uri = self.log.uri if self.log is not None else self.uri
            print(
                f"warning: MLflow at {uri} did not take {what} ({error}); training goes on "
                f"untracked. {run.run_dir}/tracking.json keeps what was not logged: "
                f"`cifar100 track {run.run_dir} --to {uri}` sends it when MLflow is back",
                file=sys.stderr,
            )
            return False
        finally:
            self._save(run)

    def _save(self, run) -> None:
        if self.log is None:
            return
        try:
            self.log.save()
        except OSError as e:  # a full disk: the run itself will say so at its next checkpoint
            print(f"warning: {run.run_dir}/tracking.json not written ({e})", file=sys.stderr)


def _write_report(run) -> None:
    """report.html and its plots, so that they go with the run's artifacts."""
    # Imported here, not above: the report loads matplotlib (a tracked run's end only).
    from cifar100.report import build_report

    try:
        build_report(run.run_dir)
    except Exception as e:  # noqa: BLE001 - the report is extra; the model and metrics go on
        print(f"note: no report.html to track ({_one_line(e)})", file=sys.stderr)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else type(e).__name__
    return (first[:200] + "...") if len(first) > 200 else first
