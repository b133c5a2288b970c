"""Classification metrics as pure functions of logits and labels: top-1, top-5, loss, per class,
per superclass, macro-F1 and calibration (calibration.py). Training, evaluation and exports
all use these.

Top-5 is reported only with more than 5 classes (`top5_applies`): the one rule, here."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from cifar100.calibration import calibration_record

__all__ = [
    "accuracy",
    "classification_metrics",
    "f1_scores",
    "top5_applies",
]


def top5_applies(num_classes: int) -> bool:
    """Whether top-5 accuracy says anything: with 5 classes or fewer every image's true class
    is among the top 5, so it would read 100% whatever the model. Everything that computes,
    logs or shows top-5 leaves it out (no key, no column, no line) where this is False."""
    return num_classes > 5


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Loss, top-1 and (where `top5_applies` to the logits' classes) top-5 of (N, C) logits."""
    labels = labels.long().cpu()
    n = len(labels)
    result = {
        "loss": float(F.cross_entropy(logits, labels)) if n else float("nan"),
        "top1": float((logits.argmax(1) == labels).double().mean()) if n else float("nan"),
    }
    if top5_applies(logits.shape[1]):
        top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1)
        result["top5"] = float(top5.double().mean()) if n else float("nan")
    return result


def classification_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    fine_to_coarse: list[int] | None = None,
    coarse_classes: list[str] | None = None,
    temperature: float | None = None,
) -> dict[str, Any]:
    """Loss, top-1, top-5 (more than 5 classes only) and per-class accuracy; per superclass
    where superclasses exist; calibration of the raw probabilities and, given the model's
    `temperature`, of the calibrated ones."""
    labels = labels.long().cpu()
    n = len(labels)
    pred = logits.argmax(1)
    correct = pred == labels
    counts = torch.bincount(labels, minlength=len(classes)).clamp(min=1)
    per_class = torch.bincount(labels, weights=correct.double(), minlength=len(classes)) / counts
    result: dict[str, Any] = {
        "images": n,
        **accuracy(logits, labels),
        "per_class": {c: round(float(a), 4) for c, a in zip(classes, per_class)},
        **f1_scores(pred, labels, classes),
        "calibration": calibration_record(logits, labels, temperature),
    }
    if fine_to_coarse is not None and coarse_classes is not None:
        mapping = torch.tensor(fine_to_coarse)
        true_coarse = mapping[labels]
        superclass_hit = mapping[pred] == true_coarse
        n_coarse = len(coarse_classes)
        sc_counts = torch.bincount(true_coarse, minlength=n_coarse).clamp(min=1)
        fine_in_sc = torch.bincount(true_coarse, weights=correct.double(), minlength=n_coarse)
        sc_hit = torch.bincount(true_coarse, weights=superclass_hit.double(), minlength=n_coarse)
        result["superclass_top1"] = float(superclass_hit.double().mean()) if n else float("nan")
        result["per_superclass"] = {
            c: {"fine_top1": round(float(f / m), 4), "superclass_top1": round(float(s / m), 4)}
            for c, f, s, m in zip(coarse_classes, fine_in_sc, sc_hit, sc_counts)
        }
    return result


def f1_scores(pred: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Macro-F1 and per-class precision, recall, F1 and support.

    The macro mean is over the classes that occur in the labels or the predictions (as
    scikit-learn does), so a class absent from a small test set does not count as F1 = 0.
    """
    k = len(classes)
    tp = torch.bincount(labels[pred == labels], minlength=k).double()
    predicted = torch.bincount(pred, minlength=k).double()
    support = torch.bincount(labels, minlength=k).double()
    precision = tp / predicted.clamp(min=1)
    recall = tp / support.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    present = (support + predicted) > 0
    return {
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class_prf": {
            c: {
                "precision": round(float(p), 4),
                "recall": round(float(r), 4),
                "f1": round(float(f), 4),
                "support": int(n),
            }
            for c, p, r, f, n in zip(classes, precision, recall, f1, support)
        },
    }
