"""Training-curve figures from metrics.jsonl: loss and accuracy per epoch, the learning rate
(step by step, given the run's schedule)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cifar100.plots.figure import plain_text, plot_text

if TYPE_CHECKING:
    from cifar100.schedule import ScheduledStep


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) for the records that carry `key` (EMA keys appear only in some runs)."""
    # Numbers only: a hand-edited or damaged log's other values are left out, as read_metrics
    # leaves out lines that are not JSON.
    pairs = [
        (r["epoch"], r[key]) for r in records if _number(r.get(key)) and _number(r.get("epoch"))
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mark_phases(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    """A dashed vertical line where the phase changes (frozen backbone -> fine-tuning)."""
    records = [r for r in records if _number(r.get("epoch"))]
    for prev, cur in zip(records, records[1:]):
        if prev.get("phase") != cur.get("phase"):
            _phase_line(ax, (prev["epoch"] + cur["epoch"]) / 2, cur.get("phase"))


def _phase_line(ax: Any, x: float, phase: Any) -> None:
    ax.axvline(x, color="0.4", linestyle="--", linewidth=1)
    ax.annotate(
        f"{plot_text(str(phase))} \u2192",
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


@plain_text
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


PHASE_LABELS = {
    "frozen": "frozen backbone: head warm-up (Adam)",
    "finetune": "fine-tuning",
    "features": "head on cached features",
}


@plain_text
def plot_lr(
    records: Sequence[dict[str, Any]], schedule: Sequence[ScheduledStep] | None = None
) -> Figure:
    """The learning rate: step by step from `schedule` (schedule.lr_schedule), one line
    per phase, with the rate logged at each epoch's end as dots; per epoch from the log alone
    without one. Log scale when it spans two decades or more."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    x, y = _series(records, "lr")
    if schedule:
        done = max(x, default=0)  # what ran so far: a stopped run's log ends early
        steps = [s for s in schedule if s.epoch <= done + 1e-9]
        values = [s.lr for s in steps]
        for phase in dict.fromkeys(s.phase for s in steps):  # in order; a jump between them
            part = [s for s in steps if s.phase == phase]
            label = PHASE_LABELS.get(phase) or plot_text(str(phase))  # a name from the log
            ax.plot([s.epoch for s in part], [s.lr for s in part], "-", linewidth=1.2, label=label)
        for prev, cur in zip(steps, steps[1:]):
            if prev.phase != cur.phase:
                _phase_line(ax, prev.epoch, cur.phase)
        ax.plot(x, y, "o", color="black", markersize=3.5, zorder=3, label="logged at epoch end")
        # Below the axes: inside, wherever it went, it covered a warm-up ramp or a phase.
        fig.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
        ax.set_ylabel("learning rate (per step)")
    else:
        values = y
        ax.plot(x, y, "-o", markersize=3)
        ax.set_ylabel("learning rate (at epoch end)")
        _mark_phases(ax, records)
    # Log scale only where most of it runs decades below the peak (steady exponential decay);
    # a cosine's tail near zero would otherwise squash the whole schedule into one corner.
    positive = sorted(v for v in values if v > 0)
    if positive and positive[len(positive) // 2] <= positive[-1] / 100:
        ax.set_yscale("log")
    ax.set_title("Learning rate")
    _epoch_axis(ax, records)
    return fig


# --- confusion ----------------------------------------------------------------------------------
