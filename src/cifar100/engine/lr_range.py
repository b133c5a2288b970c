"""The learning-rate range test's arithmetic (Smith 2015; fastai's and Lightning's lr_find):
exponentially rising rates, the smoothed loss, when to stop, and the suggested rate.

No torch here: `range_losses` takes the training step as a function of the rate, so each rule
is tested on made-up loss curves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BETA = 0.98  # the loss's moving average, bias-corrected (fastai's and Lightning's)
DIVERGE = 4.0  # stop once the smoothed loss exceeds this many times its minimum
SKIP_START = 10  # the suggestion ignores the first 1/SKIP_START of the points ...
SKIP_END = 5  # ... and the last few, where the loss takes off (fastai's trim)
RULE = "valley"  # THE suggestion; "steepest" is recorded beside it
RULE_TEXT = (
    "valley: the longest stretch over which the smoothed loss keeps falling (fastai's valley), "
    "and the rate half-way along it; steepest (the steepest fall of the smoothed loss against "
    "log rate) is recorded beside it"
)


def exponential_rates(start: float, end: float, steps: int) -> list[float]:
    """`steps` rates from `start` to `end`, each the last times the same factor."""
    if not (0 < start < end) or steps < 2:
        raise ValueError(f"rates from {start} to {end} in {steps} steps: need 0 < start < end")
    ratio = end / start
    return [start * ratio ** (i / (steps - 1)) for i in range(steps)]


@dataclass
class RangeLosses:
    """What the range test saw: one entry per step taken (raw is NaN where it was not finite)."""

    lrs: list[float]
    raw: list[float]
    smoothed: list[float]  # one fewer than raw when the last loss was not finite
    stopped: str  # "finished", "diverged" (smoothed > DIVERGE x its minimum) or "not finite"


def range_losses(
    step: Callable[[float], float],
    rates: list[float],
    beta: float = BETA,
    diverge: float = DIVERGE,
) -> RangeLosses:
    """Call step(lr) for each rate in turn, smoothing the losses it returns; stop early when the
    loss is not finite or the smoothed loss exceeds `diverge` times its minimum so far."""
    out = RangeLosses([], [], [], "finished")
    average, best = 0.0, math.inf
    for i, lr in enumerate(rates):
        loss = float(step(lr))
        out.lrs.append(lr)
        out.raw.append(loss)
        if not math.isfinite(loss):
            out.stopped = "not finite"
            break
        average = beta * average + (1 - beta) * loss
        smooth = average / (1 - beta ** (i + 1))  # the bias correction: no pull towards 0
        out.smoothed.append(smooth)
        best = min(best, smooth)
        if smooth > diverge * best:
            out.stopped = "diverged"
            break
    return out


def trimmed(lrs: list[float], smoothed: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The points a suggestion reads: the first tenth and the last SKIP_END left out (the loss
    average still settling; the blow-up), as fastai does; all of them when that leaves < 3."""
    n = min(len(lrs), len(smoothed))
    lo, hi = n // SKIP_START, n - SKIP_END
    if hi - lo < 3:
        lo, hi = 0, n
    return np.asarray(lrs[lo:hi], dtype=float), np.asarray(smoothed[lo:hi], dtype=float)


def steepest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The rate where the smoothed loss falls fastest against log rate (np.gradient); None
    where it never falls."""
    x, y = trimmed(lrs, smoothed)
    if len(x) < 2:
        return None
    slope = np.gradient(y, np.log(x))
    i = int(np.argmin(slope))
    return float(x[i]) if slope[i] < 0 else None


def valley(lrs: list[float], smoothed: list[float]) -> float | None:
    """fastai's valley: the longest decreasing run of the smoothed loss (a longest decreasing
    subsequence, ending where it ends), and the point 1/3 + 1/6 of the way along it: half-way,
    past the flat start, before the bottom where the rate is already too high. None where the
    loss never falls."""
    x, y = trimmed(lrs, smoothed)
    n = len(y)
    longest = [1] * n  # longest decreasing subsequence ending at i
    end = 0
    for i in range(1, n):
        for j in range(i):
            if y[i] < y[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[i] > longest[end]:
            end = i
    if n == 0 or longest[end] < 2:
        return None
    start = end - longest[end] + 1
    third = (end - start) / 3
    return float(x[start + int(third) + int(third / 2)])


def suggestions(lrs: list[float], smoothed: list[float]) -> dict[str, float | None]:
    """Both rules' rates, by name."""
    return {"valley": valley(lrs, smoothed), "steepest": steepest(lrs, smoothed)}
