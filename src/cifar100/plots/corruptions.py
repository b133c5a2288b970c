"""Accuracy under corruption (evaluation-corruptions.json): top-1 against severity, one panel per
family of corruptions, one line per corruption, the clean images' top-1 dashed across."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from cifar100.plots.figure import plain_text
from cifar100.runtime.corruption_evaluation import CorruptionEvaluation


@plain_text
def plot_corruptions(evaluation: CorruptionEvaluation) -> Figure:
    """One panel per family the record holds, severities along x, top-1 up the y axis (shared,
    so the families compare at a glance)."""
    names = evaluation.corruptions()
    families = list(dict.fromkeys(evaluation.family(n) for n in names))
    severities = evaluation.severities()
    fig = Figure(figsize=(3.2 * len(families) + 0.6, 3.6), layout="constrained")
    axes = fig.subplots(1, len(families), sharey=True, squeeze=False)[0]
    clean = evaluation.clean_top1
    for ax, family in zip(axes, families):
        for name in (n for n in names if evaluation.family(n) == family):
            points = [(s, evaluation.cell(name, s)["top1"]) for s in severities]
            points = [(s, v) for s, v in points if v is not None]
            ax.plot([s for s, _ in points], [v for _, v in points], "-o", markersize=3,
                    label=name.replace("_", " "))  # fmt: skip
        if clean is not None:
            ax.axhline(clean, color="0.3", linestyle="--", linewidth=1, label="clean")
        ax.set_title(family)
        ax.set_xlabel("severity")
        ax.set_xticks(severities)
        ax.set_ylim(0, 1)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("test top-1")
    return fig
