"""How well each out-of-distribution score tells a model's classes from what it never saw.

    python benchmarks/ood_scores.py RUN --near DIR [--near DIR ...]

For a trained run: its test split is in-distribution; the images under each --near folder
(e.g. the CIFAR-10 classes the run was not trained on) are the near-OOD set; uniform noise,
constant images and heavily corrupted test images (Gaussian noise of sd 100 on 0..255) are
far-OOD sets, drawn with fixed seeds. For each score (the maximum softmax probability, the
baseline of Hendrycks & Gimpel 2017; max logit; energy; GEN; the softmax entropy cifar100
uses) it prints the AUROC and the false-accept rate at the threshold that accepts 95% of the
run's validation split, and the model's own rule's. Also the calibration of the test split
before and after the model's temperature. Prints the machine it ran on.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

import cifar100
from cifar100.calibration import scores as calibration_scores
from cifar100.data import load_data
from cifar100.data.tensors import split_holdout
from cifar100.paths import resolve_cache_dir
from cifar100.predict import image_files
from cifar100.runtime.trust import entropy

SCORES = {  # higher: more like the training data
    "max softmax probability (baseline)": lambda z: z.softmax(1).max(1).values,
    "max logit": lambda z: z.max(1).values,
    "energy": lambda z: torch.logsumexp(z, 1),
    "GEN (gamma 0.1)": lambda z: -(z.softmax(1) ** 0.1 * (1 - z.softmax(1)) ** 0.1).sum(1),
    "softmax entropy (cifar100)": lambda z: -entropy(z),
}


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an in-distribution image scores higher than an OOD one), ties counted half."""
    ordered = np.sort(outside)
    below = np.searchsorted(ordered, inside, side="left")
    equal = np.searchsorted(ordered, inside, side="right") - below
    return float((below + equal / 2).sum() / (len(inside) * len(outside)))


def far_sets(test_images: np.ndarray, n: int = 2000, side: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    colours = rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8)
    constant = np.broadcast_to(colours, (n, side, side, 3)).copy()
    picked = test_images[rng.choice(len(test_images), min(n, len(test_images)), replace=False)]
    noisy = picked.astype(np.float32) + rng.normal(0, 100, picked.shape)
    return {
        "uniform noise": noise,
        "constant colour": constant,
        "test images + Gaussian noise sd 100": np.clip(noisy, 0, 255).astype(np.uint8),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("run", help="a run directory (its last checkpoint)")
    p.add_argument("--near", action="append", default=[], help="a folder of near-OOD images")
    p.add_argument("--acceptance", type=float, default=0.95)
    args = p.parse_args(argv)
    started = time.perf_counter()
    model = cifar100.load(args.run, device="cpu")
    cfg = model.info.config
    splits = load_data(cfg.data, resolve_cache_dir(None), seed=cfg.train.seed, progress=False)
    _, val = split_holdout(splits.train, cfg.data.val_fraction, cfg.train.seed)
    logits = {"val": model.logits(val.images), "test": model.logits(splits.test.images)}
    sets = {}
    if args.near:
        paths = [f for folder in args.near for f in image_files([folder])]
        sets["near: " + ", ".join(Path(f).name for f in args.near)] = model.prepare(paths)
    sets.update(far_sets(splits.test.images.numpy(), side=model.image_size))
    logits.update({name: model.logits(images) for name, images in sets.items()})
    print(f"{args.run}: {len(model.classes)} classes, test top-1 "
          f"{(logits['test'].argmax(1) == splits.test.labels).double().mean():.2%}; "
          f"{len(val)} validation and {len(splits.test)} test images")  # fmt: skip
    _print_calibration(model, logits["test"], splits.test.labels)
    rule = model.ood_rule
    for name in sets:
        print(f"\n{name} ({len(sets[name])} images)")
        print(f"  {'score':<36} AUROC   false-accept at {args.acceptance:.0%} val acceptance")
        for label, fn in SCORES.items():
            v, t, o = (fn(logits[k].double()).numpy() for k in ("val", "test", name))
            threshold = np.quantile(v, 1 - args.acceptance)
            print(f"  {label:<36} {auroc(t, o):.4f}  {(o >= threshold).mean():.4f}")
        if rule is not None:
            flagged = model.scores(logits[name]).none_of_these.double().mean().item()
            print(f"  the model's rule (entropy > {rule.threshold:.3f}): "
                  f"false-accept {1 - flagged:.4f}")  # fmt: skip
    cpu = platform.processor() or platform.machine()
    print(f"\n{time.perf_counter() - started:.0f} s on {platform.node()}: {cpu}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, cifar100 "
          f"{cifar100.__version__}")  # fmt: skip


def _print_calibration(model, test_logits: torch.Tensor, labels: torch.Tensor) -> None:
    t = model.temperature
    before = calibration_scores(test_logits, labels)
    after = calibration_scores(test_logits, labels, t or 1.0)
    print(f"calibration on the test split, temperature {t}: ECE {before['ece']:.4f} -> "
          f"{after['ece']:.4f}, NLL {before['nll']:.4f} -> {after['nll']:.4f}, Brier "
          f"{before['brier']:.4f} -> {after['brier']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
