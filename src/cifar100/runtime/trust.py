"""How far to trust one answer: calibrated probabilities and an out-of-distribution verdict,
computed from the logits alone, the same way by every runtime (PyTorch, the ONNX graph, the
Keras graph, the service).

    scores = score_logits(logits, temperature=1.3, rule=OodRule(threshold=0.9))
    scores.probabilities   # softmax(logits / temperature): calibrated (calibration.py fits T)
    scores.ood_score       # the entropy, in nats, of softmax(logits): high = unlike training
    scores.none_of_these   # ood_score > rule.threshold: the image is none of the classes

The score was chosen by measurement (docs/results.md, "None of these"): against the maximum
softmax probability (Hendrycks & Gimpel 2017), energy, max logit, GEN, Mahalanobis and
nearest-neighbour distances on the features, the softmax entropy was the one that beat it
on the near split (CIFAR-10 classes the model never saw), and by far on noise, constant
and corrupted images, while needing nothing but the logits: every export computes it in its
own graph. The threshold is set on the validation split so that a stated share of it (95%
by default) is accepted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from cifar100.calibration import fit_temperature
from cifar100.runtime.ood_rule import DEFAULT_ACCEPTANCE, OodRule

__all__ = ["Scores", "entropy", "fit_rule", "fit_trust", "ood_record", "score_logits"]


class Scores(NamedTuple):
    probabilities: torch.Tensor  # (N, C) float32, calibrated
    ood_score: torch.Tensor  # (N,) float32
    none_of_these: torch.Tensor  # (N,) bool; all False without a rule


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy in nats of softmax(logits) per row (N,): 0 for a certain answer, log C
    for a uniform one. Written with softmax and log_softmax, as the graphs write it."""
    logits = logits.float()
    return -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)


def score_logits(
    logits: torch.Tensor, temperature: float | None = None, rule: OodRule | None = None
) -> Scores:
    """Calibrated probabilities, the OOD score and the verdict of raw logits (N, C)."""
    logits = logits.float()
    probabilities = torch.softmax(logits / (temperature or 1.0), -1)
    score = entropy(logits)
    if rule is None:  # zeros_like, not zeros(len(...)): a traced batch size stays symbolic
        verdict = torch.zeros_like(score, dtype=torch.bool)
    else:
        verdict = score > rule.threshold
    return Scores(probabilities, score, verdict)


def fit_rule(val_logits: torch.Tensor, acceptance: float = DEFAULT_ACCEPTANCE) -> OodRule | None:
    """The threshold that accepts `acceptance` of the validation images (their score at or
    below it); None without validation images."""
    if not 0 < acceptance <= 1:
        raise ValueError(f"acceptance {acceptance}: a share in (0, 1]")
    scores = entropy(val_logits).double()
    if len(scores) == 0 or not torch.isfinite(scores).all():
        return None
    threshold = float(torch.quantile(scores, acceptance))
    return OodRule(threshold=round(threshold, 6), acceptance=acceptance, images=len(scores))


def fit_trust(
    val_logits: torch.Tensor, val_labels: torch.Tensor, acceptance: float = DEFAULT_ACCEPTANCE
) -> tuple[float | None, OodRule | None]:
    """The temperature and the "none of these" rule of a model from its validation logits
    and labels; (None, None) without validation images (uncalibrated, no verdict)."""
    if len(val_labels) == 0:
        return None, None
    return fit_temperature(val_logits, val_labels), fit_rule(val_logits, acceptance)


def ood_record(rule: OodRule | None, logits: torch.Tensor) -> dict[str, Any] | None:
    """What evaluation.json keeps of the rule: the rule, and the share of the test images it
    flags (about 1 - acceptance for images like the training ones); None without a rule."""
    if rule is None:
        return None
    flagged = score_logits(logits, rule=rule).none_of_these
    share = float(flagged.double().mean()) if len(flagged) else float("nan")
    return {**rule.to_json(), "test_flagged": share}
