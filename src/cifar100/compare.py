"""Side-by-side summary of run directories: `cifar100 compare runs/*`.

Each row (`--json` prints them) holds the run's settings and results; among them:

    test_top5            None where the run has 5 classes or fewer (metrics.top5_applies)
    corrupted_top1       the mean top-1 over the corruptions and severities of
                         `evaluate --corruptions` (evaluation-corruptions.json), on the images
                         it evaluated (a subset, with --corruption-images); None without one
    train_images_per_s   {phase: images/s} for each training phase the log holds, in order,
                         e.g. {"frozen": 301.2, "finetune": 58.7}: the images that phase
                         trained over the seconds its steps took (validation not included);
                         None for a features-mode run, whose epochs time the head on cached
                         features rather than images through the backbone

The table's `img/s (finetune)` column is the fine-tuning phase's rate, the one that says how
fast a backbone trains; the frozen head warm-up runs several times faster and would inflate
any figure that mixed it in.

A run that cannot be read (not a run, a damaged config.json or evaluation.json) does not stop
the others: `read_runs` gives the rows it could read and one line for each it could not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifar100.display_text import DISPLAY_LIMIT, display_name, visible
from cifar100.errors import CheckpointError, CifarError
from cifar100.runtime.corruption_evaluation import CorruptionEvaluation
from cifar100.runtime.evaluation import Evaluation
from cifar100.runtime.run_dir import RunDir


def summarize_run(path: str | Path) -> dict[str, Any]:
    """One run's settings and results, from its config, metrics log, evaluation and environment."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; give cifar100 run directories")
    run = RunDir(path)
    cfg = run.read_config()  # raises CheckpointError when it is not a run
    # Values of another type than training writes (a hand-edited or damaged file) are left
    # out, as read_metrics leaves out lines that are not JSON.
    records = [_numbers_only(r) for r in run.read_metrics()]
    # Optional: a run still training has no evaluation.json yet (a damaged one raises).
    evaluation = Evaluation.read(run.evaluation) if run.evaluation.is_file() else Evaluation()
    # evaluate --corruptions' mean top-1 (only adds a column: a damaged file is left out)
    corrupted = CorruptionEvaluation.read_if_usable(run.corruption_evaluation)
    environment = run.read_environment()  # only informs: a damaged one is left out
    environment = environment if isinstance(environment, dict) else {}
    val = [r["val_top1"] for r in records if "val_top1" in r]
    # A features-mode run's epochs time the head on cached features, not images through
    # the backbone: no figure to set beside fine-tuning runs.
    rates = phase_rates(records) if cfg.train.mode != "features" else {}
    return {
        "run": path.name,
        "path": str(path),
        "preset": cfg.preset,
        "backbone": cfg.model.backbone,
        "weights": cfg.model.weights,
        "mode": cfg.train.mode,
        "epochs_done": max((r.get("epoch", 0) for r in records), default=0),
        "epochs": cfg.train.epochs,
        "best_val_top1": max(val) if val else None,
        "test_top1": evaluation.top1,
        "test_top5": evaluation.top5,
        "corrupted_top1": corrupted.mean_top1 if corrupted else None,
        "wall_s": _wall_s(records, evaluation),
        "train_images_per_s": rates or None,
        "device": _text(environment.get("gpu") or environment.get("device")),
    }


NUMERIC = ("epoch", "val_top1", "images_per_s", "wall_s", "epoch_s")


def _numbers_only(record: dict[str, Any]) -> dict[str, Any]:
    """`record` without the NUMERIC keys whose values are not numbers."""
    return {
        k: v
        for k, v in record.items()
        if k not in NUMERIC or (isinstance(v, (int, float)) and not isinstance(v, bool))
    }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def phase_rates(records: list[dict]) -> dict[str, float]:
    """Images per second of training steps in each phase, over all its logged epochs.

    Every epoch of a run trains the same number of images (whole batches of the same split),
    so images over seconds is the harmonic mean of the epochs' rates, not their mean: a mean
    of rates lets short fast epochs outweigh long slow ones. (An epoch resumed mid-way logs
    the rate of its resumed steps and counts here as a whole epoch at that rate.)
    """
    inverse: dict[str, list[float]] = {}
    for r in records:
        rate = r.get("images_per_s")
        if isinstance(rate, (int, float)) and rate > 0:
            inverse.setdefault(str(r.get("phase") or "train"), []).append(1.0 / rate)
    return {phase: len(inv) / sum(inv) for phase, inv in inverse.items()}


def _wall_s(records: list[dict], evaluation: Evaluation) -> float:
    """The whole run's time (set-up, feature extraction and tests included) where recorded;
    for runs from before it was, the sum of the epochs'."""
    if evaluation.train_wall_s is not None:
        return evaluation.train_wall_s
    if records and "wall_s" in records[-1]:
        return records[-1]["wall_s"]
    return round(sum(r.get("epoch_s", 0.0) for r in records), 2)


def compare_runs(paths: list[str | Path]) -> list[dict[str, Any]]:
    """A summary row per run directory, in the order given (the first unreadable one raises)."""
    return [summarize_run(p) for p in paths]


def read_runs(paths: list[str | Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """(a row per run that could be read, in order; one line per run that could not, naming
    it and what is wrong)."""
    rows, broken = [], []
    for p in paths:
        try:
            rows.append(summarize_run(p))
        except (CifarError, OSError) as e:
            broken.append(_problem(Path(p), e))
    return rows, broken


def _problem(path: Path, e: Exception) -> str:
    if isinstance(e, OSError):  # e.g. a folder it may not read
        e = CheckpointError(f"{e.filename or path}: {e.strerror or e}")
    text = str(e)
    return visible(text if str(path) in text else f"{path}: {text}")


COLUMNS = [
    ("run", "run", "s"),
    ("preset", "preset", "s"),
    ("backbone", "backbone", "s"),
    ("weights", "weights", "s"),
    ("mode", "mode", "s"),
    ("epochs", None, "s"),
    ("best val", "best_val_top1", "%"),
    ("test top-1", "test_top1", "%"),
    ("corrupted top-1", "corrupted_top1", "%"),
    ("test top-5", "test_top5", "%"),
    ("wall", "wall_s", "t"),
    ("img/s (finetune)", "train_images_per_s", "r"),
    ("device", "device", "s"),
]


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """A plain-text table; a value a run lacks (no evaluation yet) is left blank."""
    table = [[name for name, _, _ in COLUMNS]]
    for row in rows:
        table.append([_cell(row, key, kind) for _, key, kind in COLUMNS])
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = []
    for r in table:
        cells = [
            c.ljust(w) if kind == "s" else c.rjust(w)
            for c, w, (_, _, kind) in zip(r, widths, COLUMNS)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _cell(row: dict[str, Any], key: str | None, kind: str) -> str:
    if key is None:
        return f"{row['epochs_done']}/{row['epochs']}"
    value = row.get(key)
    if value is None:
        return ""
    if key == "run":  # a directory's name: shown (controls visible, cut), not obeyed
        return display_name(value, DISPLAY_LIMIT)  # --json keeps it whole
    if kind == "%":
        return f"{value:.2%}"
    if kind == "t":
        return f"{value / 60:.1f} min" if value >= 60 else f"{value:.1f} s"
    if kind == "r":  # the fine-tuning phase's rate, of the rates per phase
        rate = value.get("finetune")
        return f"{rate:.0f}" if rate is not None else ""
    return visible(str(value))
