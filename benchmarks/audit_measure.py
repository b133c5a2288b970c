"""How well `cifar100 audit` finds planted label errors and copies, on real data.

    python benchmarks/audit_measure.py DATA [--flip 0.05] [--seed 0] [--folds 5]

(a) Label flips: a seeded `--flip` share of the training labels is changed to another class
    at random; the audit's cross-validated confident learning runs on the flipped labels, and
    the precision and recall of the flipped images among what it flags (and among its top
    `flipped` scores) are printed, beside what it flags with the labels as they are.
(b) The near-copy threshold: altered copies of test images (JPEG re-encoding, brightness,
    a one-pixel shift, a slight blur, the mirror image) against their originals: the share
    of each alteration whose feature cosine reaches each candidate threshold, beside the share
    of the real test images whose most similar training image reaches it.
Features come from the audit's own extraction (and cache). Prints the machine it ran on and
the time of each step.
"""

from __future__ import annotations

import argparse
import io
import platform
import time

import numpy as np
import torch
from cleanlab.filter import find_label_issues
from PIL import Image, ImageFilter

from cifar100.audit import _features, audit_config
from cifar100.audit.folds import out_of_fold_probabilities
from cifar100.audit.labels import label_issues
from cifar100.audit.neighbours import unit_rows
from cifar100.data import load_data
from cifar100.data.tensors import ImageSet
from cifar100.paths import resolve_cache_dir

THRESHOLDS = (0.80, 0.85, 0.90, 0.93, 0.95, 0.97)
# cleanlab's find_label_issues filters; the audit uses the first
FILTERS = ("prune_by_noise_rate", "both", "confident_learning")


def flip_labels(labels: np.ndarray, share: float, classes: int, seed: int):
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(labels), int(round(share * len(labels))), replace=False))
    out = labels.copy()
    out[flipped] = (labels[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return out, flipped


def alterations(image: np.ndarray) -> dict[str, np.ndarray]:
    pil = Image.fromarray(image)

    def jpeg(quality: int) -> np.ndarray:
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(buffer).convert("RGB"))

    shifted = np.pad(image, ((0, 0), (1, 0), (0, 0)), mode="edge")[:, :-1]
    return {
        "JPEG quality 75": jpeg(75),
        "brightness +10": np.clip(image.astype(np.int16) + 10, 0, 255).astype(np.uint8),
        "shifted 1 px": shifted,
        "blur (radius 0.5)": np.asarray(pil.filter(ImageFilter.GaussianBlur(0.5))),
        "mirror image": image[:, ::-1].copy(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--flip", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--altered", type=int, default=1000, help="test images altered for (b)")
    p.add_argument("--cache-dir")
    args = p.parse_args()
    print(f"machine: {platform.node()}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")  # fmt: skip
    cache = resolve_cache_dir(args.cache_dir)
    cfg, _ = audit_config(args.data, None, "cpu", None)
    t0 = time.perf_counter()
    splits = load_data(cfg.data, cache, seed=cfg.train.seed)
    train_x, test_x, described = _features(cfg, splits, cache, "cpu", True)
    print(f"features: {described}, {time.perf_counter() - t0:.0f} s (cached after the first run)")
    labels, classes = splits.train.labels.numpy(), len(splits.classes)

    print(f"\n(a) {args.flip:.0%} of {len(labels)} training labels flipped (seed {args.seed}), "
          f"{args.folds}-fold cross-validation")  # fmt: skip
    for name, given, flipped in [
        ("labels as given", labels, np.array([], dtype=np.int64)),
        ("flipped", *flip_labels(labels, args.flip, classes, args.seed)),
    ]:
        t = time.perf_counter()
        y = torch.from_numpy(given)
        folds, seed = args.folds, cfg.train.seed
        train_p, _ = out_of_fold_probabilities(
            train_x, y, test_x[:0], classes, cfg, folds, None, seed
        )
        flagged, score = label_issues(given, train_p)
        seconds = time.perf_counter() - t
        accuracy = (train_p.argmax(1) == labels).mean()
        print(f"  {name}: {seconds:.0f} s; out-of-fold top-1 against the true labels "
              f"{accuracy:.2%}")  # fmt: skip
        for method in FILTERS:
            found = np.flatnonzero(flagged if method == FILTERS[0] else
                                   find_label_issues(given, train_p, filter_by=method))  # fmt: skip
            line = f"    {method}: {len(found)} flagged"
            if len(flipped):
                hit = np.intersect1d(found, flipped)
                line += (f", precision {len(hit) / max(1, len(found)):.3f}, recall "
                         f"{len(hit) / len(flipped):.3f}")  # fmt: skip
            print(line)
        if len(flipped):
            order = np.argsort(-score)
            for k in (len(flipped) // 5, len(flipped), 2 * len(flipped)):
                hit = np.intersect1d(order[:k], flipped)
                print(f"    top {k} by score: precision {len(hit) / k:.3f}, recall "
                      f"{len(hit) / len(flipped):.3f}")  # fmt: skip

    print(f"\n(b) near copies: {args.altered} test images altered, cosine to the original")
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(len(splits.test), min(args.altered, len(splits.test)), replace=False)
    originals = test_x[picked]
    altered: dict[str, list[np.ndarray]] = {}
    for i in picked:
        for k, v in alterations(splits.test.images[i].numpy()).items():
            altered.setdefault(k, []).append(v)
    model_cfg = cfg
    sims = {}
    for k, images in altered.items():
        labels = torch.zeros(len(images), dtype=torch.long)
        data = ImageSet(torch.from_numpy(np.stack(images)), labels, splits.classes)
        feats, _, _ = _features(model_cfg, _Pair(data), cache, "cpu", False)
        sims[k] = (unit_rows(feats) * unit_rows(originals)).sum(1).numpy()
    nearest = np.concatenate([
        (unit_rows(test_x[lo : lo + 1024]) @ unit_rows(train_x).T).max(1).values.numpy()
        for lo in range(0, len(test_x), 1024)
    ])  # fmt: skip
    print("  threshold | " + " | ".join(altered) + " | real test images with a train image above")
    for th in THRESHOLDS:
        cells = [f"{(sims[k] >= th).mean():.1%}" for k in altered]
        print(f"  {th:.2f} | " + " | ".join(cells) + f" | {(nearest >= th).sum()} "
              f"({(nearest >= th).mean():.2%})")  # fmt: skip
    for k in altered:
        print(f"  {k}: cosine median {np.median(sims[k]):.3f}, 5th percentile "
              f"{np.percentile(sims[k], 5):.3f}")  # fmt: skip


class _Pair:
    """Splits of one set of images (the audit's feature step takes splits)."""

    def __init__(self, data: ImageSet) -> None:
        self.train, self.test = data, ImageSet(data.images[:0], data.labels[:0], data.classes)
        self.classes = data.classes


if __name__ == "__main__":
    main()
