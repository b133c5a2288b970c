"""`cifar100 track RUN --to URI`: send a run to an MLflow tracking server after training."""

from __future__ import annotations

import argparse

HELP = "send a run to MLflow (what has not reached it yet)"
DESCRIPTION = (
    "Log a run directory to an MLflow tracking server: its settings, environment, every "
    "epoch's metrics, the final test, report and plots, and the model in MLflow's format. "
    "Sends only what has not reached that server yet (all of it the first time), into the "
    "run's tracked run there when it has one: after `train --track mlflow=URI` found the "
    "server down, or for a run trained without tracking."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="a run directory")
    p.add_argument(
        "--to",
        required=True,
        metavar="URI",
        help="an MLflow tracking URI (http://host:5000, sqlite:///file.db), or local: the "
        "store in the run's runs root (RUNS_ROOT/mlflow.db), as train --track mlflow makes",
    )
    p.add_argument(
        "--experiment",
        metavar="NAME",
        help="the MLflow experiment (default: the run's track.experiment, cifar100)",
    )


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: MLflow takes seconds to import.
    from cifar100.tracking.send import send_run

    send_run(args.run_dir, args.to, args.experiment)
    return 0
