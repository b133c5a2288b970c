"""Experiment tracking on the field's own libraries: a training run logged to MLflow and to
TensorBoard as it goes (the [track] settings, `train --track`), and a finished run sent to an
MLflow server afterwards (`cifar100 track RUN --to URI`).

    cifar100 train --preset cpu --track mlflow --track tensorboard
    cifar100 train --preset cpu --track mlflow=http://127.0.0.1:5000
    cifar100 track runs/20261207-120000-cpu --to http://mlflow.example:5000

A tracker never stops training: one that is down or refuses is one warning line, and the
run's tracking.json remembers what did not reach it, for `cifar100 track` to send later.
"""

from __future__ import annotations

from cifar100.errors import ConfigError
from cifar100.tracking.mlflow_log import LOCAL


def track_settings(values: list[str]) -> list[str]:
    """`--track` values (mlflow, mlflow=URI, tensorboard) as `--set` overrides."""
    overrides = []
    for value in values:
        name, eq, uri = value.partition("=")
        name = name.strip().lower()
        if name == "mlflow":
            if eq and not uri.strip():
                raise ConfigError(f"--track {value!r}: give a tracking URI after = or none")
            overrides.append(f"track.mlflow={uri.strip() or LOCAL}")
        elif name == "tensorboard" and not eq:
            overrides.append("track.tensorboard=true")
        else:
            raise ConfigError(
                f"--track {value!r}: choose mlflow, mlflow=URI (a tracking server) or tensorboard"
            )
    return overrides


def trackers_for(cfg) -> list:
    """The trackers cfg.track asks for, as training callbacks; a missing library is one
    error line now, before anything is written."""
    trackers: list = []
    if cfg.track.mlflow:
        # Imported here, not above: MLflow takes seconds to import, and only tracked runs need it.
        from cifar100.tracking.live import MlflowTracker

        trackers.append(MlflowTracker(cfg.track.mlflow, cfg.track.experiment))
    if cfg.track.tensorboard:
        # Imported here, not above: TensorBoard's writer is needed by tracked runs alone.
        from cifar100.tracking.tensorboard import TensorBoardTracker

        trackers.append(TensorBoardTracker())
    return trackers
