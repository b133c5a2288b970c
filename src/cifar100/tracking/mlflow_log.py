"""One run directory logged to MLflow: its settings, environment and tags, each epoch's
metrics, then the final test, the artifacts (report, plots, evaluation) and the model in
MLflow's format. Used as training goes (tracking/live.py) and for a finished run afterwards
(tracking/send.py).

Through MlflowClient, not MLflow's fluent API: no process-wide "active run" is started, so a
notebook's own `mlflow.start_run()` is left as it was.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cifar100.errors import ConfigError
from cifar100.fileio import write_json_atomic
from cifar100.runtime.run_dir import RunDir, read_json_or_none

# A tracker that is down must not hold training up for minutes: MLflow's own defaults retry a
# request 7 times with a backoff factor of 2 (about 4 minutes). Set only where the user has
# not set them.
REQUEST_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
LOCAL = "local"  # track.mlflow: the store in the runs root (resolve_uri)
BATCH = 100  # MLflow's limit of params (and tags) in one log_batch call
LOCAL_DB, LOCAL_ARTIFACTS = "mlflow.db", "mlartifacts"
# The exports logged beside the model, where `cifar100 export` has written them.
EXPORTS = ("model.onnx", "model.int8.onnx", "model.safetensors")


def require_mlflow() -> None:
    """MLflow importable, or one line saying how to install it."""
    try:
        # Imported here, not above: MLflow takes seconds to import (a check, at a run's start).
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(
            "track.mlflow needs MLflow: pip install 'cifar100[track]' (or mlflow), or drop "
            "--track mlflow"
        ) from None


def resolve_uri(uri: str, run_dir: Path) -> str:
    """track.mlflow as a tracking URI: "local" is a SQLite store in the runs root."""
    if uri == LOCAL:
        return f"sqlite:///{run_dir.resolve().parent / LOCAL_DB}"
    return uri


@dataclass
class MlflowState:
    """tracking.json's "mlflow": where the run is tracked and what reached it."""

    uri: str
    experiment: str
    run_id: str | None = None
    params: bool = False  # settings, tags and environment
    epochs: list[int] = field(default_factory=list)  # whose metrics reached it
    final: bool = False  # test metrics, artifacts and model
    exports: list[str] = field(default_factory=list)  # the run's exports that reached it
    error: str | None = None  # the last failure, in one line

    @classmethod
    def from_json(cls, raw: Any) -> MlflowState | None:
        if not isinstance(raw, dict):
            return None
        try:
            state = cls(**{k: v for k, v in raw.items() if k != "not_logged"})
        except TypeError:
            return None  # damaged or foreign: start a new tracked run
        sound = (
            isinstance(state.uri, str)
            and isinstance(state.run_id, str | None)
            and isinstance(state.epochs, list)
            and all(isinstance(e, int) for e in state.epochs)
            and isinstance(state.exports, list)
            and all(isinstance(e, str) for e in state.exports)
        )
        return state if sound else None

    def missing(self, logged_epochs: list[int], finished: bool, exports: list[str]) -> list[str]:
        """What of the run has not reached MLflow, in words."""
        gaps = [] if self.params else ["settings"]
        epochs = [e for e in logged_epochs if e not in self.epochs]
        if epochs:
            gaps.append(f"epoch{'s' if len(epochs) > 1 else ''} {_ranges(epochs)}")
        if finished and not self.final:
            gaps.append("the final test, artifacts and model")
        gaps += [name for name in exports if name not in self.exports]
        return gaps


def read_tracking(run_dir: Path) -> dict[str, Any]:
    raw = read_json_or_none(RunDir(run_dir).tracking)
    return raw if isinstance(raw, dict) else {}


class MlflowLog:
    """Logs `run_dir` to the MLflow at `uri`, keeping tracking.json up to date."""

    def __init__(self, run_dir: Path, uri: str, experiment: str) -> None:
        # Imported here, not above: MLflow takes seconds to import; only tracked runs need it.
        from mlflow import MlflowClient

        for name, value in REQUEST_DEFAULTS.items():
            os.environ.setdefault(name, value)
        # MLflow's INFO lines (creating a store's tables) are not the user's business.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.files, self.local = RunDir(run_dir), uri == LOCAL
        self.uri = resolve_uri(uri, Path(run_dir))
        self.client = MlflowClient(tracking_uri=self.uri)
        old = MlflowState.from_json(read_tracking(run_dir).get("mlflow"))
        same = old is not None and old.uri == self.uri and old.experiment == experiment
        self.state = old if same else MlflowState(self.uri, experiment)

    def save(self) -> None:
        """tracking.json, with what has not reached MLflow in words ("not_logged")."""
        record = read_tracking(self.files.path)
        epochs = [int(r["epoch"]) for r in self.files.read_metrics() if "epoch" in r]
        missing = self.state.missing(epochs, self.files.evaluation.is_file(), self._exports())
        record["mlflow"] = {**asdict(self.state), "not_logged": missing}
        write_json_atomic(self.files.tracking, record)

    def start(self) -> None:
        """Continue the run's tracked run where it exists, or create one (RUNNING)."""
        client, state = self.client, self.state
        if state.run_id is not None and self._exists(state.run_id):
            client.update_run(state.run_id, status="RUNNING")
            return
        state.run_id, state.params, state.epochs, state.final = None, False, [], False
        config = read_json_or_none(self.files.config) or {}
        run = client.create_run(
            self._experiment_id(), run_name=self.files.path.name, tags=_tags(config)
        )
        state.run_id = run.info.run_id

    def log_params(self) -> None:
        """The resolved config as params, the environment as tags, both files as artifacts."""
        if self.state.params:
            return
        # Imported here, not above: MLflow's types load with MLflow (see __init__).
        from mlflow.entities import Param, RunTag

        config = read_json_or_none(self.files.config) or {}
        params = [Param(k, str(v)[:6000]) for k, v in _flat(config).items()]
        env = read_json_or_none(self.files.environment) or {}
        tags = [RunTag(f"env.{k}", str(v)[:5000]) for k, v in env.items() if _scalar(v)]
        for i in range(0, max(len(params), len(tags)), BATCH):
            self.client.log_batch(
                self.state.run_id, params=params[i : i + BATCH], tags=tags[i : i + BATCH]
            )
        for file in (self.files.config, self.files.environment):
            if file.is_file():
                self.client.log_artifact(self.state.run_id, str(file))
        self.state.params = True

    def log_epoch(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record, every number in it at step = its epoch."""
        epoch = int(record["epoch"])
        if epoch in self.state.epochs:
            return
        # Imported here, not above: MLflow's types load with MLflow (see __init__).
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, epoch)
            for k, v in record.items()
            if k != "epoch" and _number(v)
        ]
        self.client.log_batch(self.state.run_id, metrics=metrics)
        self.state.epochs.append(epoch)

    def log_final(self, model=None, image_size: int = 32, classes=()) -> None:
        """The test metrics, the run's files and the model; the run marked FINISHED."""
        run_id = self.state.run_id
        if not self.state.final:
            self._log_test()
            for file in (self.files.evaluation, self.files.metrics, self.files.report):
                if file.is_file():
                    self.client.log_artifact(run_id, str(file))
            if self.files.plots.is_dir():
                self.client.log_artifacts(run_id, str(self.files.plots), "plots")
            if model is not None:
                self._log_model(model, image_size, list(classes))
            self.state.final = True
        # Also after the final results: `cifar100 export` may have written one since.
        for name in self._exports():
            if name not in self.state.exports:
                self.client.log_artifact(run_id, str(self.files / name), "exports")
                self.state.exports.append(name)
        self.client.set_terminated(run_id, status="FINISHED")

    def _exports(self) -> list[str]:
        return [name for name in EXPORTS if (self.files / name).is_file()]

    def pause(self, status: str = "KILLED") -> None:
        """The session stopped before the end (a signal, a limit: KILLED; an error: FAILED),
        until a resume continues it."""
        self.client.set_terminated(self.state.run_id, status=status)

    def where(self) -> str:
        """Where to look, in words."""
        ui = f"mlflow ui --backend-store-uri {self.uri}" if self.local else self.uri
        return f"MLflow run {self.state.run_id} ({self.state.experiment}; {ui})"

    def _log_test(self) -> None:
        # Imported here, not above: MLflow's types load with MLflow (see __init__).
        from mlflow.entities import Metric

        evaluation = read_json_or_none(self.files.evaluation) or {}
        now, step = int(time.time() * 1000), int(evaluation.get("epoch") or 0)
        test = {k: v for k, v in _flat(evaluation).items() if _number(v) and k != "epoch"}
        metrics = [Metric(f"test.{k}", float(v), now, step) for k, v in test.items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes up to 1000 metrics in a batch
            self.client.log_batch(self.state.run_id, metrics=metrics[i : i + 1000])

    def _log_model(self, model, image_size: int, classes: list[str]) -> None:
        """The model in MLflow's PyTorch format, with a signature: float32 RGB N x 3 x S x S
        in 0..255 -> N x classes logits."""
        # Imported here, not above: MLflow's flavours load torch (a tracked run's end only).
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        from cifar100.version import __version__

        model = model.eval()
        example = np.zeros((2, 3, image_size, image_size), np.float32)
        with torch.no_grad():
            out = model(torch.from_numpy(example)).float().numpy()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model"
            mlflow.pytorch.save_model(
                model,
                str(path),
                signature=infer_signature(example, out),
                # Pickled: the model's classes come from cifar100, which loading needs.
                serialization_format="pickle",
                pip_requirements=[f"cifar100=={__version__}", f"torch=={torch.__version__}"],
                metadata={"classes": classes, "input": "RGB 0..255, float32, N x 3 x S x S"},
            )
            self.client.log_artifacts(self.state.run_id, str(path), "model")

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.state.experiment)
        if found is not None:
            return found.experiment_id
        # A local store keeps its artifacts beside it (MLflow's default is ./mlruns, wherever
        # the command was started).
        where = self.files.path.resolve().parent / LOCAL_ARTIFACTS if self.local else None
        return self.client.create_experiment(
            self.state.experiment, artifact_location=where.as_uri() if where else None
        )

    def _exists(self, run_id: str) -> bool:
        # Imported here, not above: MLflow's types load with MLflow (see __init__).
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise


def _tags(config: dict) -> dict[str, str]:
    data, model, train = (config.get(k) or {} for k in ("data", "model", "train"))
    tags = {
        "preset": config.get("preset"),
        "dataset": data.get("dataset"),
        "backbone": model.get("backbone"),
        "mode": train.get("mode"),
    }
    return {k: str(v) for k, v in tags.items() if v is not None}


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists are left out (per-class tables)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _scalar(v: Any) -> bool:
    return v is not None and not isinstance(v, list | dict)


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    parts, start = [], None
    for i, n in enumerate(numbers):
        start = n if start is None else start
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(f"{start}-{n}" if n != start else str(n))
            start = None
    return ", ".join(parts)
