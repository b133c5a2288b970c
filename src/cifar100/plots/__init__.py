"""Figures for a run: training curves, learning rate, confusion matrices, examples, per class.

    from cifar100.plots import plot_run
    plot_run(Path("runs/20240101-120000-seed"))  # writes runs/.../plots/*.png and *.svg

Figures are built on `matplotlib.figure.Figure` directly (Agg), never through pyplot, so no
global figure state leaks between calls or threads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cifar100.errors import CifarError
from cifar100.plots.confusion import (
    confusion_matrix,
    most_confused_pairs,
    plot_confused_pairs,
    plot_confusion,
    superclass_confusion,
    superclass_order,
)
from cifar100.plots.corruptions import plot_corruptions
from cifar100.plots.figure import save_figure
from cifar100.plots.predictions import (
    per_class_from,
    plot_examples,
    plot_per_class,
    plot_reliability,
)
from cifar100.plots.training import plot_curves, plot_lr
from cifar100.predictions_file import read_predictions
from cifar100.runtime.corruption_evaluation import CorruptionEvaluation
from cifar100.runtime.evaluation import Evaluation
from cifar100.runtime.run_dir import RunDir
from cifar100.schedule import ScheduledStep, lr_schedule

__all__ = [
    "confusion_matrix",
    "most_confused_pairs",
    "plot_confused_pairs",
    "plot_confusion",
    "plot_corruptions",
    "plot_curves",
    "plot_examples",
    "plot_lr",
    "plot_per_class",
    "plot_reliability",
    "plot_run",
    "run_schedule",
    "save_figure",
    "superclass_confusion",
    "superclass_order",
]


def plot_run(run_dir: str | Path) -> dict[str, list[Path]]:
    """Write every plot the run directory's files allow into run_dir/plots; name -> files.

    Curves need only metrics.jsonl (an interrupted run can be plotted); per-class accuracy uses
    evaluation.json; confusion, mistakes and examples need predictions.npz; accuracy under
    corruption evaluation-corruptions.json."""
    run = RunDir(run_dir)
    out = run.plots
    written: dict[str, list[Path]] = {}

    def save(name: str, fig: Figure) -> None:
        written[name] = save_figure(fig, out / name)

    records = run.read_metrics()
    if records:
        save("curves", plot_curves(records))
        save("lr", plot_lr(records, run_schedule(run.path, records)))

    per_class = None
    if run.evaluation.is_file():
        evaluation = Evaluation.read(run.evaluation)
        per_class = evaluation.per_class or None
        calibration = evaluation.calibration
        if calibration and calibration.get("bins"):
            save("reliability", plot_reliability(calibration))

    if run.predictions.is_file():
        arrays = read_predictions(run.predictions)
        labels = arrays["labels"]
        preds = arrays["logits"].argmax(axis=1)
        classes = [str(c) for c in arrays["classes"]]
        f2c = arrays.get("fine_to_coarse")
        save("confusion", plot_confusion(labels, preds, classes, fine_to_coarse=f2c))
        if f2c is not None and "coarse_classes" in arrays:
            coarse = [str(c) for c in arrays["coarse_classes"]]
            save("superclass_confusion", superclass_confusion(labels, preds, f2c, coarse))
        pairs = most_confused_pairs(labels, preds, classes)
        if pairs:
            save("confused_pairs", plot_confused_pairs(pairs))
        if "images" in arrays:
            images = _test_images(arrays)
            save("examples", plot_examples(images, labels, preds, classes))
            if pairs:  # at least one mistake to show
                save("mistakes", plot_examples(images, labels, preds, classes, only_wrong=True))
        per_class = per_class or per_class_from(labels, preds, classes)

    if per_class:
        save("per_class", plot_per_class(per_class))
    corrupted = CorruptionEvaluation.read_if_usable(run.corruption_evaluation)
    if corrupted is not None and corrupted.corruptions():
        save("corruptions", plot_corruptions(corrupted))
    return written


def run_schedule(run_dir: Path, records: list[dict]) -> list[ScheduledStep] | None:
    """The run's learning rate step by step, from its config.json and the training-set size
    its metrics log records; None for a run logged before that was (its plot is per epoch)."""
    images = next((r["train_images"] for r in reversed(records) if "train_images" in r), None)
    if not isinstance(images, int) or images <= 0:
        return None
    try:
        cfg = RunDir(run_dir).read_config()
    except CifarError:
        return None
    return lr_schedule(cfg.train, images)


def _test_images(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The test images indexed like the labels: the file holds only the grids' images (with
    `image_index`), or all of them (files written before it did)."""
    images = arrays["images"]
    if "image_index" not in arrays:
        return images
    full = np.zeros((len(arrays["labels"]), *images.shape[1:]), dtype=images.dtype)
    full[arrays["image_index"]] = images
    return full
