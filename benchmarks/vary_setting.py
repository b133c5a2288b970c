"""One short run per value of one setting, every other setting equal.

    python benchmarks/vary_setting.py model.weights=imagenet,none
    python benchmarks/vary_setting.py train.finetune_bn=batch,frozen --set train.freeze_epochs=1

Trains one backbone once per value on an image-folder dataset (by default the real CIFAR-10
JPEGs, 5,000 training images at 64x64, ImageNet weights, 3 epochs of the `scratch` preset),
and prints test accuracy, the validation curve and wall time of each, with the machine it
ran on.
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("vary", metavar="KEY=V1,V2,...", help="the setting and its values")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra overrides, applied to every run",
    )
    p.add_argument("--out", default=None, help="keep the run directories here")
    args = p.parse_args(argv)
    key, _, values = args.vary.partition("=")
    if not values:
        p.error(f"{args.vary!r}: expected KEY=V1,V2,...")
    settings = [
        "data.dataset=folder",
        f"data.path={args.data}",
        f"model.backbone={args.backbone}",
        "model.weights=imagenet",
        "model.resize=2",
        "data.limit_train=5000",
        "train.epochs=3",
        "train.freeze_epochs=0",
        "train.batch_size=64",
        "train.lr=0.02",
        "train.warmup_epochs=0.2",
        *args.set,
    ]
    root = Path(args.out or tempfile.mkdtemp(prefix="vary-setting-"))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {'CUDA' if torch.cuda.is_available() else 'no GPU'}"
    )
    print("settings (every run): scratch preset + " + " ".join(settings))
    rows = []
    for value in values.split(","):
        cfg = apply_overrides(load_preset("scratch"), [*settings, f"{key}={value}"])
        start = time.perf_counter()
        result = train(cfg, out=root / value, cache_dir=root / "cache", progress=False)
        lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
        curve = [e["val_top1"] for e in map(json.loads, lines) if "val_top1" in e]
        rows.append(
            {
                key: value,
                "top1": result.test["top1"],
                "top5": result.test.get("top5"),  # absent for 5 classes or fewer
                "val_top1": curve,
                "wall_s": time.perf_counter() - start,
            }
        )
    print(f"\n{key:<24} {'test top-1':>10} {'test top-5':>10} {'wall':>7}  validation top-1")
    for r in rows:
        curve = ", ".join(f"{v:.1%}" for v in r["val_top1"])
        top5 = f"{r['top5']:.2%}" if r["top5"] is not None else ""
        print(f"{r[key]:<24} {r['top1']:>10.2%} {top5:>10} {r['wall_s']:>6.0f}s  {curve}")
    (root / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
