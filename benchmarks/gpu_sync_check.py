"""Host synchronisations inside the training step loop, found by CUDA's sync debug mode.

    python benchmarks/gpu_sync_check.py [--preset best] [--steps 40] [--resize 2]

Trains a few steps of a preset on synthetic CIFAR-100-format data with
`torch.cuda.set_sync_debug_mode("warn")` on inside the step loop, and off during the one
synchronisation the loop means to make (its logging step). Prints each place that made the
GPU wait, with a count: none means the loop never waits for the GPU between logging steps.
Without CUDA (a dry run of the plumbing) it trains the same steps and says it checked nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cifar100.config import apply_overrides, load_preset  # noqa: E402
from cifar100.engine import finetune  # noqa: E402
from cifar100.engine.train import train  # noqa: E402
from cifar100.models import registry  # noqa: E402
from synthetic_cifar import make_cifar100_archive  # noqa: E402


def _sync_mode(level: int) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode(level)


def _watched(fn, level_inside: int, level_after: int):
    def wrapper(*args, **kwargs):
        _sync_mode(level_inside)
        try:
            return fn(*args, **kwargs)
        finally:
            _sync_mode(level_after)

    return wrapper


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--preset", default="best", help="its recipe: policy, mixing, EMA, ...")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--resize", type=int, default=2, help="model.resize (7 is the report's 224)")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sync-check-"))
    archive = make_cifar100_archive(root / "c100.tar.gz", n_train=2000, n_test=200)
    cfg = apply_overrides(
        load_preset(args.preset),
        [f"data.path={archive}", f"model.resize={args.resize}",
         f"train.batch_size={args.batch_size}", "train.epochs=3", "train.freeze_epochs=1",
         "train.log_every=10", "train.checkpoint_minutes=0"],
    )  # fmt: skip
    # Random weights stand in for the pretrained ones (nothing is downloaded), keeping the
    # frozen phase the preset has.
    registry.load_backbone_weights = lambda *a, **k: None
    # Warn inside the step loop; silent for its intended sync and everything outside it.
    finetune.train_epoch = _watched(finetune.train_epoch, 1, 0)
    finetune._check_and_show = _watched(finetune._check_and_show, 0, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg, out=root / "run", cache_dir=root / "cache", progress=False,
              stop_after_steps=args.steps)  # fmt: skip
    places = Counter(
        f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
    )
    steps = f"{args.steps} steps of the {args.preset} recipe (frozen, then fine-tuning)"
    if not torch.cuda.is_available():
        print(f"no CUDA: trained {steps} on the CPU; no synchronisation can be detected here")
        return
    print(f"{torch.cuda.get_device_name()}: {steps}, batch {args.batch_size}")
    if not places:
        print("no host synchronisation inside the step loop outside its logging steps")
    for place, count in places.most_common():
        print(f"  {count:5d} x {place}")


if __name__ == "__main__":
    main()
