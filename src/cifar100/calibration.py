"""Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks"): one
number T, fitted on the validation split by minimising the negative log-likelihood, that
divides every logit before the softmax. It keeps each image's ranking of the classes (so the
accuracy) and makes a probability of 0.9 mean right about 90% of the time.

    T = fit_temperature(val_logits, val_labels)
    probabilities = (logits / T).softmax(1)
    scores(logits, labels, T)   # ECE, NLL and Brier, with and without T

Pure functions of logits and labels, like metrics.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["LIMITS", "calibration_record", "fit_temperature", "scores"]

LIMITS = (0.05, 20.0)  # T outside this says the logits are broken, not over-confident
BINS = 15  # equal-width confidence bins of the expected calibration error


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in LIMITS that minimises the NLL of softmax(logits / T) on `labels`.

    The NLL is convex in 1/T, so a golden-section search over log T finds its minimum to
    1e-6 without a learning rate or a starting point to tune; 1.0 for no images."""
    logits, labels = logits.double().cpu(), labels.long().cpu()
    if len(labels) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    lo, hi = math.log(LIMITS[0]), math.log(LIMITS[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    while hi - lo > 1e-6:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return round(math.exp((lo + hi) / 2), 6)


def scores(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict[str, Any]:
    """ECE (over BINS confidence bins, with each bin: a reliability diagram's bars), NLL and
    Brier score of softmax(logits / temperature) against `labels`.

    A bin i holds confidences in (i/BINS, (i+1)/BINS]; ECE = sum over bins of
    count/N * |accuracy - mean confidence|. Brier: the mean over images of the squared
    distance between the probability vector and the one-hot label (0 is perfect, 2 worst)."""
    labels = labels.long().cpu()
    n = len(labels)
    if n == 0:
        return {"ece": float("nan"), "nll": float("nan"), "brier": float("nan"), "bins": []}
    probs = (logits.double().cpu() / temperature).softmax(1)
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    # ceil(conf * bins) - 1 puts a confidence exactly on an edge in the lower bin.
    index = (torch.ceil(conf * BINS).long() - 1).clamp(0, BINS - 1)
    count = torch.bincount(index, minlength=BINS).double()
    conf_sum = torch.bincount(index, weights=conf, minlength=BINS)
    hit_sum = torch.bincount(index, weights=correct, minlength=BINS)
    mean_conf = conf_sum / count.clamp(min=1)
    accuracy = hit_sum / count.clamp(min=1)
    onehot = F.one_hot(labels, probs.shape[1]).double()
    return {
        "ece": float(((count / n) * (accuracy - mean_conf).abs()).sum()),
        "nll": float(F.nll_loss(probs.clamp(min=1e-300).log(), labels)),
        "brier": float(((probs - onehot) ** 2).sum(1).mean()),
        "bins": [
            {
                "lower": round(i / BINS, 6),
                "upper": round((i + 1) / BINS, 6),
                "count": int(count[i]),
                "confidence": float(mean_conf[i]) if count[i] else None,
                "accuracy": float(accuracy[i]) if count[i] else None,
            }
            for i in range(BINS)
        ],
    }


def calibration_record(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float | None = None
) -> dict[str, Any]:
    """What evaluation.json keeps: the raw probabilities' scores (ece, nll, brier, bins), the
    model's temperature, and the calibrated probabilities' scores under "calibrated" (None
    for a model without a temperature)."""
    record = scores(logits, labels)
    record["temperature"] = temperature
    record["calibrated"] = None if temperature is None else scores(logits, labels, temperature)
    return record
