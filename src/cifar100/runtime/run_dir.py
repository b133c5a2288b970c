"""Run directories: each holds its resolved config, environment, metrics log, checkpoints,
evaluations and page. Every file name of a run is spelled here, and only here: `RunDir` knows
them, and the other modules ask it.

    run = RunDir("runs/20261201-120000-cpu-finetune")
    run.last, run.best, run.evaluation, run.report    # paths
    run.read_config(), run.read_metrics(), Evaluation.read(run.evaluation)
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifar100.config import Config, from_dict
from cifar100.errors import CheckpointError, ConfigError
from cifar100.fileio import write_failure, write_json_atomic, write_text_atomic

CONFIG = "config.json"
ENVIRONMENT = "environment.json"
METRICS = "metrics.jsonl"
EVALUATION = "evaluation.json"
PREDICTIONS = "predictions.npz"  # the test logits beside it, for the plots
# evaluate --corruptions: evaluation-corruptions.json, FILE.eval-corruptions.json
CORRUPTIONS_VARIANT = "-corruptions"
LOCK_NAME = ".lock"  # held while a run trains; ignored when asking whether a directory holds a run


LAST = "last.pt"  # the run's latest state (resumable, mid-epoch too)
BEST = "best.pt"  # the weights of its best validation epoch
REPORT = "report.html"
PLOTS = "plots"
CHECKPOINTS = (LAST, BEST)
TRACKING = "tracking.json"  # where the run is tracked (MLflow's run id) and what was not logged
TENSORBOARD = "tensorboard"  # track.tensorboard's event files


@dataclass(frozen=True)
class RunDir:
    """A run directory and the files it holds (or will hold)."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    config = property(lambda self: self.path / CONFIG)
    environment = property(lambda self: self.path / ENVIRONMENT)
    metrics = property(lambda self: self.path / METRICS)
    evaluation = property(lambda self: self.path / EVALUATION)
    predictions = property(lambda self: self.path / PREDICTIONS)
    tracking = property(lambda self: self.path / TRACKING)
    tensorboard = property(lambda self: self.path / TENSORBOARD)
    last = property(lambda self: self.path / LAST)
    best = property(lambda self: self.path / BEST)
    report = property(lambda self: self.path / REPORT)
    plots = property(lambda self: self.path / PLOTS)
    lock = property(lambda self: self.path / LOCK_NAME)
    corruption_evaluation = property(lambda self: self.evaluation_variant(CORRUPTIONS_VARIANT))

    def checkpoint(self, which: str = "last") -> Path:
        """last.pt or best.pt."""
        return self.path / {"last": LAST, "best": BEST}[which]

    def is_run(self) -> bool:
        """Whether it holds a run's config (what every cifar100 run directory has)."""
        return self.config.is_file()

    def evaluation_variant(self, variant: str) -> Path:
        """evaluation{variant}.json: "" is the run's own, "-best-tta" a variant's."""
        return self.path / f"evaluation{variant}.json"

    def predictions_variant(self, variant: str) -> Path:
        return self.path / f"predictions{variant}.npz"

    def variant_evaluations(self) -> list[tuple[list[str], Path]]:
        """The other evaluations' files, each with the words of its variant (best, ema, tta)."""
        found = []
        for path in sorted(self.path.glob("evaluation-*.json")):
            if path == self.corruption_evaluation:  # another record, not a variant of this one
                continue
            found.append((path.stem.removeprefix("evaluation-").split("-"), path))
        return found

    def file_evaluations(self) -> list[Path]:
        """The evaluations of model files in the run directory (`cifar100 evaluate FILE` of an
        export or a checkpoint): FILE.eval.json, FILE.eval-VARIANT.json, and the old shared
        name (model.eval.json); the record in each names the file it evaluated."""
        found = self.path.glob("*.eval*.json")
        named = [p for p in found if re.fullmatch(r".+\.eval(-[a-z]+)*\.json", p.name)]
        other = f".eval{CORRUPTIONS_VARIANT}.json"  # another record: file_corruption_evaluations
        return sorted(p for p in named if not p.name.endswith(other))

    def file_corruption_evaluations(self) -> list[Path]:
        """The corruption evaluations of model files in the run directory
        (FILE.eval-corruptions.json: `cifar100 evaluate FILE --corruptions`)."""
        return sorted(self.path.glob(f"*.eval{CORRUPTIONS_VARIANT}.json"))

    def read_config(self) -> Config:
        return read_run_config(self.path)

    def read_config_json(self) -> dict[str, Any]:
        return read_config_json(self.path)

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics)

    def read_environment(self) -> dict[str, Any] | None:
        """environment.json, or None where it is missing or damaged (it only informs)."""
        return read_json_or_none(self.environment)

    def metrics_log(self) -> MetricsLog:
        return MetricsLog(self.metrics)


def file_evaluation(target: Path, variant: str = "") -> Path:
    """Where `cifar100 evaluate FILE` writes the evaluation of a model file (an export or a
    checkpoint outside a run): FILE.eval{variant}.json beside it, named with the file's whole
    name (model.onnx.eval.json), so that model.onnx and model.safetensors each keep their own."""
    return target.with_name(f"{target.name}.eval{variant}.json")


def file_predictions(target: Path, variant: str = "") -> Path:
    """FILE.predictions{variant}.npz beside a model file (model.onnx.predictions.npz)."""
    return target.with_name(f"{target.name}.predictions{variant}.npz")


def shared_file_evaluation(target: Path) -> Path:
    """The name a file's evaluation had before each file kept its own: the stem's
    (model.eval.json, shared by model.onnx and model.safetensors). Still read, where the
    record it holds names the file (Evaluation.matches)."""
    return target.with_suffix(".eval.json")


def file_evaluations(target: Path) -> list[Path]:
    """Where a model file's own plain evaluation may be: its name, then the shared old one."""
    return [file_evaluation(target), shared_file_evaluation(target)]


def predictions_beside(evaluation: Path) -> Path:
    """The predictions file beside an evaluation written where the user asked (--output)."""
    return evaluation.with_name(evaluation.stem + ".predictions.npz")


def read_json_or_none(path: Path) -> Any:
    """A JSON file's value, or None where it is missing or not JSON (files that only inform)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def new_run_dir(root: str | Path, preset: str) -> Path:
    """runs/<date>-<time>-<preset>, made unique if two runs start in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{preset}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


RESUME_HINT = "pass --resume {path} to continue it, or another --out"


def check_new_run_dir(path: Path, hint: str = RESUME_HINT) -> None:
    """Refuse to overwrite an earlier run's work (checked before any slow step)."""
    if path.exists() and (not path.is_dir() or any(p.name != LOCK_NAME for p in path.iterdir())):
        raise ConfigError(f"run directory {path} already holds a run: {hint.format(path=path)}")


def prepare_run_dir(path: Path, cfg: Config, environment: dict, replace: bool = False) -> None:
    """Create a new run directory with its resolved config and environment (`replace`: those
    of a run that never reached a checkpoint, started again)."""
    if not replace:
        check_new_run_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    if replace:  # epochs logged before a save that never landed are not part of the run
        (path / METRICS).unlink(missing_ok=True)
    write_json_atomic(path / CONFIG, cfg.to_dict())
    write_json_atomic(path / ENVIRONMENT, environment)


def never_checkpointed(path: Path) -> bool:
    """A run directory that holds its config but no checkpoint (stopped, or its first save
    failed, before one was written): it can only start again. Epochs it logged are not backed
    by any weights, so they go too."""
    has = {p.name for p in path.iterdir()} if path.is_dir() else set()
    return CONFIG in has and not has & set(CHECKPOINTS)


def read_run_config(path: Path) -> Config:
    file = path / CONFIG
    if not file.is_file():
        raise CheckpointError(f"{path}: no {CONFIG}; not a cifar100 run directory")
    raw = read_json_object(file, "run config", "unreadable")
    return from_dict(raw, preset=raw.get("preset", "custom"))


def read_config_json(path: Path) -> dict[str, Any]:
    """The run's config.json as written (for display); one clear error when it is damaged."""
    return read_json_object(path / CONFIG, "run config", "unreadable")


def read_json_object(file: Path, what: str, damaged: str) -> dict[str, Any]:
    """A JSON object from one of the run's files; one clear error when it is not one."""
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: {damaged} ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: not a cifar100 {what} (not a JSON object)")
    return raw


def recorded_threads(path: Path) -> int | None:
    """The CPU thread count a run began with (environment.json), if it recorded one."""
    try:
        return int(read_json_or_none(path / ENVIRONMENT)["torch_threads"])
    except (ValueError, KeyError, TypeError):
        return None


class MetricsLog:
    """Append-only JSON-lines log, one record per epoch, flushed and fsynced as written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a line cut short is dropped on resume (truncate_after)
            raise write_failure(self.path, len(line), e, "metrics log") from e

    def truncate_after(self, epoch: int) -> None:
        """Drop records past `epoch`, written before a crash the checkpoint does not cover."""
        kept = [r for r in read_metrics(self.path) if r.get("epoch", 0) <= epoch]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All complete records; a line cut short by a crash is skipped."""
    if not path.is_file():
        return []
    records = []
    # A line a crash cut short may end inside a character: replaced, then skipped as bad JSON.
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
