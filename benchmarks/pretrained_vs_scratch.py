"""Does ImageNet pretraining pay? The same short run with and without the weights.

    python benchmarks/pretrained_vs_scratch.py [--data ../shared/data/cifar10-jpeg.tar.gz]

Trains one backbone twice on an image-folder dataset (by default the real CIFAR-10 JPEGs),
identical in every setting but `model.weights`, and prints test accuracy and wall time of
each, with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from cifar100.config import apply_overrides, load_preset
from cifar100.engine.train import train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra overrides, applied to both runs",
    )
    p.add_argument("--out", default=None, help="keep the run directories here")
    args = p.parse_args()
    settings = [
        "data.dataset=folder",
        f"data.path={args.data}",
        f"model.backbone={args.backbone}",
        "model.resize=2",
        "data.limit_train=5000",
        "train.epochs=3",
        "train.freeze_epochs=0",
        "train.batch_size=64",
        "train.lr=0.02",
        "train.warmup_epochs=0.2",
        *args.set,
    ]
    root = Path(args.out or tempfile.mkdtemp(prefix="pretrained-vs-scratch-"))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {'CUDA' if torch.cuda.is_available() else 'no GPU'}"
    )
    print("settings (both runs): scratch preset + " + " ".join(settings))
    rows = []
    for weights in ("imagenet", "none"):
        cfg = apply_overrides(load_preset("scratch"), [*settings, f"model.weights={weights}"])
        start = time.perf_counter()
        result = train(cfg, out=root / weights, cache_dir=root / "cache", progress=False)
        rows.append(
            (weights, result.test["top1"], result.test["top5"], time.perf_counter() - start)
        )
    print(f"\n{'weights':<10} {'test top-1':>10} {'test top-5':>10} {'wall':>8}")
    for weights, top1, top5, wall in rows:
        print(f"{weights:<10} {top1:>10.2%} {top5:>10.2%} {wall:>7.0f}s")
    (root / "summary.json").write_text(
        json.dumps([dict(zip(("weights", "top1", "top5", "wall_s"), r)) for r in rows], indent=2)
    )


if __name__ == "__main__":
    main()
