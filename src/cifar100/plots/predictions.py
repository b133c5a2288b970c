"""Figures of test predictions: example grids (right in green, wrong in red), accuracy per
class, and the reliability diagram (calibration)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cifar100.plots.confusion import confusion_matrix
from cifar100.plots.figure import NAME_LIMIT, label_inches, plain_text, plot_names

CORRECT, WRONG = "#1a7f37", "#cf222e"  # green / red that stay distinct on white


EXAMPLES = 36  # images in each grid
TITLE_LIMIT = 20  # characters of a name above a 1.6-inch image


def example_indices(
    labels: np.ndarray,
    preds: np.ndarray,
    n: int = EXAMPLES,
    seed: int = 0,
    only_wrong: bool = False,
) -> np.ndarray:
    """The test images an example grid shows: `n` drawn at random (misclassified ones only
    with `only_wrong`), sorted; the same for the same predictions and seed."""
    pool = np.flatnonzero(labels != preds) if only_wrong else np.arange(len(labels))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))


@plain_text
def plot_examples(
    images: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    classes: Sequence[str],
    n: int = EXAMPLES,
    seed: int = 0,
    only_wrong: bool = False,
) -> Figure:
    """A grid of random test images titled "true / predicted": green if right, red if wrong.

    `images` is indexed like `labels`; only the rows `example_indices` picks are read."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    picked = example_indices(labels, preds, n, seed, only_wrong)
    cols = max(1, math.ceil(math.sqrt(len(picked))))
    rows = max(1, math.ceil(len(picked) / cols))
    fig = Figure(figsize=(1.6 * cols, 1.75 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    shown = plot_names(classes, TITLE_LIMIT)
    for ax, i in zip(axes, picked):
        # nearest: a 32x32 image scaled up shows its real pixels, not a blur of them.
        ax.imshow(images[i], interpolation="nearest")
        ok = labels[i] == preds[i]
        ax.set_title(
            f"{shown[labels[i]]}\n/ {shown[preds[i]]}",
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


@plain_text
def plot_per_class(per_class: dict[str, float]) -> Figure:
    """Test accuracy per class, best first, with the mean marked; tall enough for 100 classes."""
    items = sorted(per_class.items(), key=lambda kv: (-kv[1], kv[0]))
    k = len(items)
    font = 9 if k <= 20 else 7
    names = plot_names([name for name, _ in items], NAME_LIMIT)
    width = 7 + max(0.0, label_inches(names, font) - 1.2)  # long names widen it, not squash it
    fig = Figure(figsize=(width, max(3.0, 0.17 * k + 1.2)), layout="constrained")
    ax = fig.subplots()
    values = [100 * v for _, v in items]
    ax.barh(range(k), values, color="#3b7dd8", height=0.75)
    ax.set_yticks(range(k), labels=names, fontsize=font)
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


def per_class_from(labels: np.ndarray, preds: np.ndarray, classes: Sequence[str]) -> dict:
    counts = confusion_matrix(labels, preds, len(classes))
    totals = counts.sum(axis=1)
    return {c: float(counts[i, i] / totals[i]) for i, c in enumerate(classes) if totals[i]}


@plain_text
def plot_reliability(calibration: dict[str, Any]) -> Figure:
    """Reliability diagram: accuracy against confidence per bin, with the ECE in the title;
    where the record has temperature-scaled probabilities ("calibrated"), two panels: as
    trained | after temperature scaling, on the same axes."""
    after = calibration.get("calibrated")
    panels = [(calibration, "As trained")]
    if isinstance(after, dict) and after.get("bins"):
        t = calibration.get("temperature")
        words = f"temperature {t:.2f}" if isinstance(t, int | float) else "calibrated"
        panels.append((after, f"After {words}"))
    fig = Figure(figsize=(5.5 * len(panels), 5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    for ax, (record, name) in zip(axes, panels):
        _reliability_panel(ax, record, name if len(panels) > 1 else "Reliability")
    return fig


def _reliability_panel(ax, calibration: dict[str, Any], title: str) -> None:
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
    ax.set_title(f"{title} — ECE {calibration['ece']:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
