"""A run sent to MLflow after training (`cifar100 track RUN --to URI`): whatever of it has
not reached that tracking server yet (all of it, the first time), into the same tracked run
where tracking.json knows one there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cifar100.errors import CheckpointError, CifarError
from cifar100.runtime.evaluation import Evaluation
from cifar100.runtime.run_dir import RunDir
from cifar100.tracking.mlflow_log import MlflowLog, MlflowState, require_mlflow


def send_run(
    run_dir: str | Path, uri: str, experiment: str | None = None, say: Callable = print
) -> MlflowState:
    """Log the run at `run_dir` to the MLflow at `uri` ("local": the runs root's store)."""
    files = RunDir(run_dir)
    if not files.is_run():
        raise CheckpointError(f"{run_dir}: not a run directory (no config.json); give a run")
    require_mlflow()
    experiment = experiment or files.read_config().track.experiment
    log = MlflowLog(files.path, uri, experiment)
    evaluation = Evaluation.read_if_usable(files.evaluation)
    try:
        log.start()
        log.log_params()
        for record in files.read_metrics():
            log.log_epoch(record)
        if evaluation is None:
            log.pause()
            say(f"note: {run_dir} is not finished: its settings and epochs so far were sent")
        else:
            _send_final(log, files, evaluation)
    except CifarError:
        raise
    except Exception as e:  # noqa: BLE001 - MLflow's and the network's errors, as one line
        log.state.error = str(e).strip().splitlines()[0][:200] if str(e).strip() else repr(e)
        raise CifarError(
            f"MLflow at {log.uri} did not take {run_dir} ({log.state.error}); what reached it "
            f"is kept in {files.tracking}: run this again to send the rest"
        ) from None
    finally:
        log.save()
    say(f"sent {run_dir} to {log.where()}")
    return log.state


def _send_final(log: MlflowLog, files: RunDir, evaluation: Evaluation) -> None:
    """The final results with the model the final test used (its checkpoint)."""
    # Imported here, not above: building the report and the model loads torch.
    from cifar100.report import build_report
    from cifar100.runtime.trained_model import load

    if log.state.final:
        log.log_final()
        return
    if not files.report.is_file():
        build_report(files.path)
    checkpoint = Path(evaluation.record.get("checkpoint") or files.last)
    if not checkpoint.is_file():
        checkpoint = files.last
    model = load(checkpoint, device="cpu")
    log.log_final(model.module, model.info.image_size, model.info.classes)
