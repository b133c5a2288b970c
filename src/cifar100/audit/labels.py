"""Wrong labels by confident learning (Northcutt et al. 2021), through cleanlab."""

from __future__ import annotations

import warnings

import numpy as np

from cifar100.errors import CifarError

INSTALL = "pip install 'cifar100[audit]' (or pip install cleanlab)"
# cleanlab's filter: "both" flags what pruning by class and by noise rate agree on. With 5%
# of the real CIFAR-10 labels flipped it kept the recall of cleanlab's default
# (prune_by_noise_rate: 0.854 vs 0.872) at a better precision (0.355 vs 0.297), and flagged
# 29% fewer images on the labels as given (benchmarks/audit_measure.py, docs/results.md).
FILTER = "both"


def label_issues(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flagged, score) per image: flagged where confident learning counts the given label
    among the likely errors (cleanlab's find_label_issues, by FILTER); score is
    1 - the probability of the given label (cleanlab's self-confidence), higher = more
    suspect. `probabilities` must be out of sample (audit.folds) for the counts to hold."""
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise CifarError(f"finding wrong labels needs cleanlab: {INSTALL}") from None
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = _well_formed(probabilities)
    with warnings.catch_warnings():
        # cleanlab warns where a class has few images; the audit says so in its own words
        warnings.simplefilter("ignore")
        flagged = find_label_issues(labels, probabilities, filter_by=FILTER)
        quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    return np.asarray(flagged, dtype=bool), 1.0 - np.asarray(quality, dtype=np.float64)


def _well_formed(p: np.ndarray) -> np.ndarray:
    """Rows summing to 1 with no exact zeros (cleanlab's input checks)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, None)
    return p / p.sum(1, keepdims=True)
