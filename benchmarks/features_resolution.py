"""What input size buys in frozen-feature mode on a CPU: the `cpu` preset at several sizes.

    python benchmarks/features_resolution.py [--data ../shared/data/cifar10-jpeg.tar.gz]
        [--resize 2 3] [--backbone efficientnet_lite0]

Runs the `cpu` preset (frozen ImageNet features, flipped copies, the report's head trained
for 30 epochs) once per upsampling factor on an image-folder dataset, by default the real
CIFAR-10 JPEGs, and prints test accuracy and the whole run's wall time (feature extraction
included), with the machine. The runs share one cache of decoded images, so only the first
pays for decoding, and that cost is printed apart; each run pays for its own features.
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
from cifar100.data import load_data
from cifar100.engine.train import train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--resize", type=int, nargs="+", default=[2, 3], help="32 px times this")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="keep the run directories here")
    args = p.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="features-resolution-"))
    cache = root / "cache"
    base = ["data.dataset=folder", f"data.path={args.data}", f"model.backbone={args.backbone}"]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}"
    )
    print("settings: cpu preset + " + " ".join(base + args.set))
    start = time.perf_counter()
    load_data(apply_overrides(load_preset("cpu"), base).data, cache, progress=False)
    print(f"decoding the images once (shared by the runs): {time.perf_counter() - start:.0f} s")
    rows = []
    for factor in args.resize:
        cfg = apply_overrides(load_preset("cpu"), [*base, f"model.resize={factor}", *args.set])
        start = time.perf_counter()
        result = train(cfg, out=root / f"resize{factor}", cache_dir=cache, progress=False)
        wall = time.perf_counter() - start
        rows.append(
            {"size": 32 * factor, "top1": result.test["top1"], "top5": result.test.get("top5"),
             "wall_s": round(wall, 1)}
        )  # fmt: skip
    print(f"\n{'size':>5} {'test top-1':>10} {'test top-5':>10} {'wall':>8}")
    for r in rows:
        top5 = f"{r['top5']:.2%}" if r["top5"] is not None else ""  # none for <= 5 classes
        print(f"{r['size']:>5} {r['top1']:>10.2%} {top5:>10} {r['wall_s']:>7.0f}s")
    (root / "summary.json").write_text(json.dumps(rows, indent=2))
    print(f"runs in {root}")


if __name__ == "__main__":
    main()
