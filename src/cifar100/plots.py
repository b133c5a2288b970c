"""Figures for a run: training curves, learning rate, confusion matrices, examples, per class.

    from cifar100.plots import plot_run
    plot_run(Path("runs/20240101-120000-seed"))  # writes runs/.../plots/*.png and *.svg

Figures are built on `matplotlib.figure.Figure` directly (Agg), never through pyplot, so no
global figure state leaks between calls or threads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cifar100.engine.runs import EVALUATION, METRICS, read_metrics
from cifar100.fileio import atomic_path

PREDICTIONS = "predictions.npz"
PLOTS_DIR = "plots"
PNG_DPI = 120
CORRECT, WRONG = "#1a7f37", "#cf222e"  # green / red that stay distinct on white


def save_figure(fig: Figure, path_without_suffix: str | Path) -> list[Path]:
    """Write `fig` as PNG and SVG beside each other, each atomically; return both paths."""
    base = Path(path_without_suffix)
    written = []
    for fmt in ("png", "svg"):
        # Appended, not with_suffix: a name like "top1.0" must keep its dot.
        target = base.parent / f"{base.name}.{fmt}"
        with atomic_path(target) as tmp:
            # format= explicitly: the temporary name ends in .tmp.
            fig.savefig(tmp, format=fmt, dpi=PNG_DPI, bbox_inches="tight")
        written.append(target)
    return written


# --- training curves --------------------------------------------------------------------------


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) for the records that carry `key` (EMA keys appear only in some runs)."""
    pairs = [(r["epoch"], r[key]) for r in records if r.get(key) is not None and "epoch" in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _mark_phases(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    """A dashed vertical line where the phase changes (frozen backbone -> fine-tuning)."""
    for prev, cur in zip(records, records[1:]):
        if prev.get("phase") != cur.get("phase"):
            x = (prev["epoch"] + cur["epoch"]) / 2
            ax.axvline(x, color="0.4", linestyle="--", linewidth=1)
            ax.annotate(
                f"{cur.get('phase')} \u2192",
                xy=(x, 1),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize=8,
                color="0.3",
            )


def _epoch_axis(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    # Whole epochs only: matplotlib would otherwise label 2.5, 7.5, ...
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def plot_curves(records: Sequence[dict[str, Any]]) -> Figure:
    """Loss and top-1 accuracy per epoch (train, val, EMA val where logged), side by side."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for key, label, style in [
        ("train_loss", "train", "-o"),
        ("val_loss", "validation", "-s"),
        ("val_loss_ema", "validation (EMA)", "--^"),
    ]:
        x, y = _series(records, key)
        if x:
            ax_loss.plot(x, y, style, markersize=3, label=label)
    for key, label, style in [
        ("train_top1", "train top-1", "-o"),
        ("val_top1", "validation top-1", "-s"),
        ("val_top1_ema", "validation top-1 (EMA)", "--^"),
        ("val_top5", "validation top-5", ":s"),
    ]:
        x, y = _series(records, key)
        if x:
            ax_acc.plot(x, [100 * v for v in y], style, markersize=3, label=label)
    losses = [v for line in ax_loss.get_lines() for v in line.get_ydata() if v > 0]
    if losses and max(losses) / min(losses) >= 100:  # a diverging early epoch flattens the rest
        ax_loss.set_yscale("log")
    ax_loss.set_title("Loss")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_acc.set_title("Accuracy")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        _epoch_axis(ax, records)
        _mark_phases(ax, records)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    best = _series(records, "val_top1")[1]
    suffix = f" \u2014 best validation top-1 {100 * max(best):.2f}%" if best else ""
    fig.suptitle(f"Performance{suffix}")
    return fig


def plot_lr(records: Sequence[dict[str, Any]]) -> Figure:
    """Learning rate per epoch; log scale when it spans two decades or more."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    x, y = _series(records, "lr")
    ax.plot(x, y, "-o", markersize=3)
    # Log scale only where most epochs run decades below the peak (steady exponential decay);
    # a cosine's tail near zero would otherwise squash the whole schedule into one corner.
    positive = sorted(v for v in y if v > 0)
    if positive and positive[len(positive) // 2] <= positive[-1] / 100:
        ax.set_yscale("log")
    ax.set_title("Learning rate")
    ax.set_ylabel("learning rate (at epoch end)")
    _epoch_axis(ax, records)
    _mark_phases(ax, records)
    return fig


# --- confusion ----------------------------------------------------------------------------------


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: rows are true classes, columns predicted classes."""
    labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
    flat = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def superclass_order(fine_to_coarse: Sequence[int]) -> list[int]:
    """Class indices grouped by superclass (stable: classes keep their order within a group)."""
    return sorted(range(len(fine_to_coarse)), key=lambda i: (fine_to_coarse[i], i))


def _row_normalise(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    return counts / np.maximum(totals, 1)  # a class absent from the sample stays a zero row


def _matrix_figure(matrix: np.ndarray, names: Sequence[str], title: str) -> tuple[Figure, Any]:
    """Heatmap of a row-normalised matrix, sized so that every class name is readable."""
    k = len(names)
    side = max(6.0, 0.18 * k + 3)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="0.85")
    # A class with no test images is a grey row, not a row of zeros that reads "never right".
    shown = np.ma.masked_where(np.repeat(matrix.sum(axis=1, keepdims=True) == 0, k, axis=1), matrix)
    # Square-root colour scale: with a strong diagonal, linear would hide the 1-5% mistakes.
    norm = PowerNorm(gamma=0.5, vmin=0, vmax=1)
    im = ax.imshow(shown, cmap=cmap, norm=norm, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.6, label="fraction of the true class (sqrt scale)")
    font = 9 if k <= 20 else max(5.5, min(8.0, 500 / k))
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels=names, rotation=90, fontsize=font)
    ax.set_yticks(ticks, labels=names, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if k <= 20:  # few cells: print the numbers, in white on the dark ones
        for i in range(k):
            for j in range(k):
                v = matrix[i, j]
                if v >= 0.005:
                    color = "white" if norm(v) > 0.6 else "black"
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
    return fig, ax


def plot_confusion(
    labels: np.ndarray,
    preds: np.ndarray,
    classes: Sequence[str],
    order: Sequence[int] | None = None,
    title: str = "Confusion matrix (rows normalised)",
    fine_to_coarse: Sequence[int] | None = None,
) -> Figure:
    """Row-normalised confusion matrix; with `fine_to_coarse`, grouped by superclass with
    boundaries drawn between the groups (`order` overrides the grouping)."""
    k = len(classes)
    if order is None:
        order = superclass_order(fine_to_coarse) if fine_to_coarse is not None else range(k)
    order = list(order)
    matrix = _row_normalise(confusion_matrix(labels, preds, k))[np.ix_(order, order)]
    fig, ax = _matrix_figure(matrix, [classes[i] for i in order], title)
    if fine_to_coarse is not None:
        groups = [fine_to_coarse[i] for i in order]
        for pos in range(1, k):
            if groups[pos] != groups[pos - 1]:
                ax.axhline(pos - 0.5, color="0.35", linewidth=0.6)
                ax.axvline(pos - 0.5, color="0.35", linewidth=0.6)
    return fig


def superclass_confusion(
    labels: np.ndarray,
    preds: np.ndarray,
    fine_to_coarse: Sequence[int],
    coarse_classes: Sequence[str],
) -> Figure:
    """The 20x20 matrix of superclasses, from fine labels and fine predictions."""
    mapping = np.asarray(fine_to_coarse, np.int64)
    counts = confusion_matrix(mapping[labels], mapping[preds], len(coarse_classes))
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    title = f"Superclass confusion (rows normalised) \u2014 superclass top-1 {100 * accuracy:.1f}%"
    return _matrix_figure(_row_normalise(counts), list(coarse_classes), title)[0]


def most_confused_pairs(
    labels: np.ndarray, preds: np.ndarray, classes: Sequence[str], k: int = 15
) -> list[tuple[str, str, int]]:
    """The `k` most frequent (true, predicted, count) mistakes, most frequent first."""
    counts = confusion_matrix(labels, preds, len(classes))
    np.fill_diagonal(counts, 0)
    flat = counts.ravel()
    # Stable sort on -count: ties keep (true, predicted) index order, so the result is reproducible.
    top = np.argsort(-flat, kind="stable")[:k]
    n = len(classes)
    return [(classes[i // n], classes[i % n], int(flat[i])) for i in top if flat[i] > 0]


def plot_confused_pairs(pairs: Sequence[tuple[str, str, int]]) -> Figure:
    """Horizontal bars "true -> predicted", the most frequent mistake at the top."""
    fig = Figure(figsize=(7, max(2.5, 0.32 * len(pairs) + 1.2)), layout="constrained")
    ax = fig.subplots()
    names = [f"{t} \u2192 {p}" for t, p, _ in pairs]
    counts = [c for _, _, c in pairs]
    ax.barh(range(len(pairs)), counts, color="#d1495b")
    ax.set_yticks(range(len(pairs)), labels=names, fontsize=9)
    ax.invert_yaxis()
    for i, c in enumerate(counts):
        ax.text(c, i, f" {c}", va="center", fontsize=8)
    ax.set_xlabel("test images misclassified")
    ax.set_title("Most confused pairs (true \u2192 predicted)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.margins(x=0.1)
    return fig


# --- examples and per-class accuracy ------------------------------------------------------------


def plot_examples(
    images: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    classes: Sequence[str],
    n: int = 36,
    seed: int = 0,
    only_wrong: bool = False,
) -> Figure:
    """A grid of random test images titled "true / predicted": green if right, red if wrong."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    pool = np.flatnonzero(labels != preds) if only_wrong else np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
    cols = max(1, math.ceil(math.sqrt(len(picked))))
    rows = max(1, math.ceil(len(picked) / cols))
    fig = Figure(figsize=(1.6 * cols, 1.75 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, i in zip(axes, picked):
        # nearest: a 32x32 image scaled up shows its real pixels, not a blur of them.
        ax.imshow(images[i], interpolation="nearest")
        ok = labels[i] == preds[i]
        ax.set_title(
            f"{classes[labels[i]]}\n/ {classes[preds[i]]}",
            fontsize=7,
            color=CORRECT if ok else WRONG,
        )
    right = int((labels[picked] == preds[picked]).sum())
    if only_wrong:
        title = f"{len(picked)} misclassified test images, titled true / predicted"
    else:
        title = (
            f"{len(picked)} random test images, titled true / predicted: "
            f"{right} right (green), {len(picked) - right} wrong (red)"
        )
    fig.suptitle(title, fontsize=10)
    return fig


def plot_per_class(per_class: dict[str, float]) -> Figure:
    """Test accuracy per class, best first, with the mean marked; tall enough for 100 classes."""
    items = sorted(per_class.items(), key=lambda kv: (-kv[1], kv[0]))
    k = len(items)
    fig = Figure(figsize=(7, max(3.0, 0.17 * k + 1.2)), layout="constrained")
    ax = fig.subplots()
    values = [100 * v for _, v in items]
    ax.barh(range(k), values, color="#3b7dd8", height=0.75)
    font = 9 if k <= 20 else 7
    ax.set_yticks(range(k), labels=[name for name, _ in items], fontsize=font)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.1f}", va="center", fontsize=font - 1)
    mean = float(np.mean(values)) if values else 0.0
    ax.axvline(mean, color="0.3", linestyle="--", linewidth=1, label=f"mean {mean:.1f}%")
    ax.set_xlim(0, 108)  # room for the value printed after a bar at 100%
    ax.set_ylim(k - 0.5, -0.5)
    ax.set_xlabel("test top-1 accuracy (%)")
    ax.set_title("Accuracy per class")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


# --- a whole run --------------------------------------------------------------------------------


def _per_class_from(labels: np.ndarray, preds: np.ndarray, classes: Sequence[str]) -> dict:
    counts = confusion_matrix(labels, preds, len(classes))
    totals = counts.sum(axis=1)
    return {c: float(counts[i, i] / totals[i]) for i, c in enumerate(classes) if totals[i]}


def plot_reliability(calibration: dict[str, Any]) -> Figure:
    """Reliability diagram: accuracy against confidence per bin, with the ECE in the title."""
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    bins = [b for b in calibration["bins"] if b["count"]]
    width = calibration["bins"][0]["upper"] - calibration["bins"][0]["lower"]
    centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
    ax.bar(centres, [b["accuracy"] for b in bins], width=width * 0.9, color="#3a7bd5",
           label="accuracy in the bin")  # fmt: skip
    # The gap between a bar's top and its marker is that bin's miscalibration.
    ax.plot(centres, [b["confidence"] for b in bins], "_", color="#d62728", markersize=14,
            markeredgewidth=2, label="mean confidence in the bin")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="#555", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability — ECE {calibration['ece']:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_run(run_dir: str | Path) -> dict[str, list[Path]]:
    """Write every plot the run directory's files allow into run_dir/plots; name -> files.

    Curves need only metrics.jsonl (an interrupted run can be plotted); per-class accuracy uses
    evaluation.json; confusion, mistakes and examples need predictions.npz."""
    run_dir = Path(run_dir)
    out = run_dir / PLOTS_DIR
    written: dict[str, list[Path]] = {}

    def save(name: str, fig: Figure) -> None:
        written[name] = save_figure(fig, out / name)

    records = read_metrics(run_dir / METRICS)
    if records:
        save("curves", plot_curves(records))
        save("lr", plot_lr(records))

    per_class = None
    if (run_dir / EVALUATION).is_file():
        evaluation = json.loads((run_dir / EVALUATION).read_text())
        per_class = evaluation.get("per_class")
        if evaluation.get("calibration", {}).get("bins"):
            save("reliability", plot_reliability(evaluation["calibration"]))

    if (run_dir / PREDICTIONS).is_file():
        with np.load(run_dir / PREDICTIONS, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
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
            save("examples", plot_examples(arrays["images"], labels, preds, classes))
            if pairs:  # at least one mistake to show
                save(
                    "mistakes",
                    plot_examples(arrays["images"], labels, preds, classes, only_wrong=True),
                )
        per_class = per_class or _per_class_from(labels, preds, classes)

    if per_class:
        save("per_class", plot_per_class(per_class))
    return written
