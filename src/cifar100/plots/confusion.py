"""Confusion figures: the class matrix ordered by superclass, the superclass matrix, the pairs
of classes most often mistaken for each other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from cifar100.plots.figure import label_inches, plain_text, plot_names

PAIR_LIMIT = 28  # characters of each name in "true -> predicted"


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
    font = 9 if k <= 20 else max(5.5, min(8.0, 500 / k))
    labels = plot_names(names)  # as written, cut to NAME_LIMIT: a 250-character name squashed it
    # Long names get room of their own rather than taking it from the cells (short ones, such
    # as CIFAR-100's, fit in the first 1.2 inches).
    side = max(6.0, 0.18 * k + 3) + max(0.0, label_inches(labels, font) - 1.2)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="0.85")
    # A class with no test images is a grey row, not a row of zeros that reads "never right".
    shown = np.ma.masked_where(np.repeat(matrix.sum(axis=1, keepdims=True) == 0, k, axis=1), matrix)
    # Square-root colour scale: with a strong diagonal, linear would hide the 1-5% mistakes.
    norm = PowerNorm(gamma=0.5, vmin=0, vmax=1)
    im = ax.imshow(shown, cmap=cmap, norm=norm, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.6, label="fraction of the true class (sqrt scale)")
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels=labels, rotation=90, fontsize=font)
    ax.set_yticks(ticks, labels=labels, fontsize=font)
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


@plain_text
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


@plain_text
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


@plain_text
def plot_confused_pairs(pairs: Sequence[tuple[str, str, int]]) -> Figure:
    """Horizontal bars "true -> predicted", the most frequent mistake at the top."""
    unique = list(dict.fromkeys(n for t, p, _ in pairs for n in (t, p)))
    shown = dict(zip(unique, plot_names(unique, PAIR_LIMIT)))
    names = [f"{shown[t]} \u2192 {shown[p]}" for t, p, _ in pairs]
    width = 7 + max(0.0, label_inches(names, 9) - 2.5)  # long names widen it, not squash it
    fig = Figure(figsize=(width, max(2.5, 0.32 * len(pairs) + 1.2)), layout="constrained")
    ax = fig.subplots()
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
