"""The learning-rate range test's figure: loss against rate (log scale), the suggestion marked."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from cifar100.plots.figure import plain_text, plot_text

RULE_STYLES = {"valley": ("tab:red", "-"), "steepest": ("tab:green", ":")}


@plain_text
def lr_find_figure(
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    suggestion: float | None,
    rates: Mapping[str, float | None],
    setting: str,
    title: str,
) -> Figure:
    """Raw loss (faint) and smoothed loss against the rate; a vertical line at each rule's rate,
    the suggestion's solid and labelled with the setting it is for."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    raw = [(x, y) for x, y in zip(lrs, losses) if math.isfinite(y)]
    if raw:
        ax.plot(*zip(*raw), color="0.7", linewidth=0.8, label="loss per step")
    if smoothed:
        ax.plot(lrs[: len(smoothed)], smoothed, color="tab:blue", label="smoothed loss")
        # The last few points, where the loss takes off, would flatten the rest: left out of
        # the scale (as the rules leave them out), drawn past the top.
        shown = smoothed[:-5] if len(smoothed) > 10 else smoothed
        low, high = min(smoothed), max(shown)
        ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    for rule, rate in rates.items():
        if rate is None:
            continue
        color, style = RULE_STYLES.get(rule, ("0.3", "--"))
        chosen = rate == suggestion
        label = f"{rule}: {setting}={rate:.3g}" + (" (suggested)" if chosen else "")
        ax.axvline(rate, color=color, linestyle=style, linewidth=2 if chosen else 1, label=label)
    ax.set_xscale("log")
    ax.set_xlabel(f"learning rate ({setting})")
    ax.set_ylabel("training loss")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title(plot_text(f"Learning-rate range test: {title}", 80))
    return fig
