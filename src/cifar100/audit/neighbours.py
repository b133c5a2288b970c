"""What each image's nearest neighbours in feature space say: duplicates, leaks, outliers.

Exact copies: the same decoded pixels (sha256). Near copies: a cosine similarity of backbone
features at or above a threshold (audit.NEAR_THRESHOLD says how it was chosen). Outliers: the
mean cosine distance to the k nearest training images, fenced as cleanlab's Datalab fences it
(above Q3 + (1/0.37037 - 1) x IQR of the training images' distances).
The search is blockwise: memory holds one block of similarities whatever the number of images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

BLOCK = 1024  # query rows per matrix product: 1024 x 50,000 float32 similarities = 200 MB
NEIGHBOURS = 10  # k of the outlier distance, as cleanlab's default
FENCE = 1 / 0.37037 - 1  # cleanlab Datalab's default outlier threshold, as an IQR multiple


@dataclass(frozen=True)
class Match:
    """Image `index` is a copy of `partner` (an earlier image of its split, or a test image
    for a leak) with feature cosine `similarity`; `exact`: the same pixels."""

    index: int
    partner: int
    similarity: float
    exact: bool


@dataclass
class Scan:
    """One split's copies and each of its images' mean distance to its nearest training images."""

    matches: list[Match]
    distance: np.ndarray


def unit_rows(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to length 1 (float32), so that a dot product is their cosine similarity."""
    return torch.nn.functional.normalize(features.float(), dim=1)


def scan_within(
    feats: torch.Tensor,
    digests: list[str],
    threshold: float,
    progress: bool = False,
    split: str = "train",
) -> Scan:
    """Within one split: each image's most similar earlier image where at least `threshold`
    (or the same pixels: the later copy of a pair is the one flagged), and its mean distance
    to its k nearest other images of the split."""
    first: dict[str, int] = {}
    x, n = unit_rows(feats), len(feats)
    k = min(NEIGHBOURS, n - 1)
    distance = np.zeros(n)
    matches = []
    for lo in tqdm(range(0, n, BLOCK), desc=f"neighbours: {split}", disable=not progress):
        hi = min(n, lo + BLOCK)
        sims = x[lo:hi] @ x.T
        rows = torch.arange(lo, hi).unsqueeze(1)
        cols = torch.arange(n).unsqueeze(0)
        sims.masked_fill_(cols == rows, -2.0)  # not its own neighbour
        if k > 0:
            distance[lo:hi] = (1 - sims.topk(k, 1).values).mean(1).numpy()
        best, where = sims.masked_fill_(cols > rows, -2.0).max(1)  # earlier images only
        for r in range(hi - lo):
            i = lo + r
            j = first.setdefault(digests[i], i)
            if j != i:
                matches.append(Match(i, j, 1.0, True))
            elif i and best[r] >= threshold:
                matches.append(Match(i, int(where[r]), float(best[r]), False))
    return Scan(matches, distance)


def scan_test(
    test: torch.Tensor,
    test_digests: list[str],
    train: torch.Tensor,
    train_digests: list[str],
    threshold: float,
    progress: bool = False,
) -> tuple[Scan, list[Match]]:
    """The test split against the training split: the test images' duplicates among
    themselves are not looked for; each test image's mean distance to its k nearest training
    images; and the leaks: each training image's most similar test image where at least
    `threshold`, or one with the same pixels (index: the training image, partner: the test
    one). Returns (the test split's scan, the leaks)."""
    q, c = unit_rows(test), unit_rows(train)
    k = min(NEIGHBOURS, len(c))
    distance = np.zeros(len(q))
    best = torch.full((len(c),), -2.0)
    where = torch.zeros(len(c), dtype=torch.long)
    for lo in tqdm(range(0, len(q), BLOCK), desc="neighbours: test", disable=not progress):
        sims = q[lo : lo + BLOCK] @ c.T
        if k > 0:
            distance[lo : lo + len(sims)] = (1 - sims.topk(k, 1).values).mean(1).numpy()
        if len(c):
            top, arg = sims.max(0)
            better = top > best
            best[better], where[better] = top[better], arg[better] + lo
    same = {}
    for j, d in enumerate(test_digests):
        same.setdefault(d, j)
    leaks = []
    for i, d in enumerate(train_digests):
        j = same.get(d)
        if j is not None:
            leaks.append(Match(i, j, 1.0, True))
        elif len(q) and best[i] >= threshold:
            leaks.append(Match(i, int(where[i]), float(best[i]), False))
    return Scan([], distance), leaks


def outlier_fence(train_distance: np.ndarray) -> float:
    """The distance above which an image is an outlier: cleanlab Datalab's rule."""
    if not len(train_distance):
        return float("inf")
    q1, q3 = np.percentile(train_distance, [25, 75])
    return float(q3 + FENCE * (q3 - q1))
