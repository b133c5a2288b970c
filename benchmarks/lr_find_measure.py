"""Does `cifar100 lr-find` suggest a rate that trains as well as the tuned one?

    python benchmarks/lr_find_measure.py --data /tmp/s8/data/cifar10-jpeg --cache-dir CACHE

On an image folder (by default the real CIFAR-10 JPEGs), the `cpu-finetune` preset on 5,000
training images (data.limit_train): the range test of its fine-tuning phase (--seeds; and
once after its frozen epoch, --after-frozen) and of its frozen-backbone head phase; the head
phase of the `cpu` preset (features mode, all training images, from the feature cache); then
one short run (the preset's 3 epochs) at the preset's tuned train.lr=0.02 and one at each
suggested rate (valley, valley after the frozen epoch, steepest), all in this one process.
Prints the machine, versions, load, times and the numbers; writes summary.json to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from cifar100.bench import cpu_name
from cifar100.config import apply_overrides, load_preset
from cifar100.engine.lr_find import find_lr, save_result
from cifar100.engine.train import train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
TUNED_LR = 0.02  # cpu-finetune's train.lr (docs/results.md, "Batch norm while fine-tuning")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--limit-train", type=int, default=5000)
    p.add_argument("--steps", type=int, default=100, help="range-test steps (lr-find's default)")
    p.add_argument("--seeds", type=int, default=1, help="fine-tuning range tests, seeds 0..N-1")
    p.add_argument("--out", default=None, help="run directories and summary.json go here")
    args = p.parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="lr-find-measure-"))
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    data = ["data.dataset=folder", f"data.path={args.data}"]
    small = [*data, f"data.limit_train={args.limit_train}"]
    summary: dict = {"machine": cpu_name(), "torch": torch.__version__, "finds": [], "runs": []}
    finetune = apply_overrides(load_preset("cpu-finetune"), small)
    found = {}
    for seed in range(args.seeds):
        cfg = apply_overrides(load_preset("cpu-finetune"), [*small, f"train.seed={seed}"])
        found[seed] = _find(cfg, "finetune", root / f"find-finetune-seed{seed}", args, summary)
    after = _find(finetune, "finetune", root / "find-finetune-after-frozen", args, summary, True)
    _find(finetune, "head", root / "find-cpu-finetune-head", args, summary)
    cpu = apply_overrides(load_preset("cpu"), data)
    _find(cpu, "head", root / "find-cpu-head", args, summary)
    rates = {"tuned (preset)": TUNED_LR, "lr-find valley": found[0]["valley"],
             "lr-find valley after frozen": after["valley"],
             "lr-find steepest": found[0]["steepest"]}  # fmt: skip
    rates = {k: v for k, v in rates.items() if v}
    for name, lr in rates.items():
        cfg = apply_overrides(load_preset("cpu-finetune"), [*small, f"train.lr={lr}"])
        start, load = time.perf_counter(), os.getloadavg()[0]
        result = train(cfg, out=root / f"run-lr{lr:.3g}", cache_dir=args.cache_dir,
                       progress=False)  # fmt: skip
        wall = time.perf_counter() - start
        row = {"rate": name, "lr": lr, "top1": result.test["top1"], "wall_s": round(wall, 1),
               "load_at_start": load}  # fmt: skip
        summary["runs"].append(row)
        print(f"run {name}: train.lr={lr:.3g} -> test top-1 {row['top1']:.2%} "
              f"({wall:.0f} s, load {load:.1f})", flush=True)  # fmt: skip
    print("\nrange tests (suggestion = valley):")
    for f in summary["finds"]:
        print(f"  {f['what']:<48} valley {_g(f['valley']):<10} steepest {_g(f['steepest']):<10} "
              f"{f['steps']} steps ({f['stopped']}), {f['seconds']:.0f} s")  # fmt: skip
    print("runs (cpu-finetune, 3 epochs, test top-1 on the 10,000 test images):")
    for r in summary["runs"]:
        print(f"  {r['rate']:<20} lr {r['lr']:<8.3g} {r['top1']:.2%}  {r['wall_s']:.0f} s")
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"load average at end {os.getloadavg()[0]:.2f}; written to {root}")


def _find(
    cfg, phase: str, out: Path, args: argparse.Namespace, summary: dict, after: bool = False
) -> dict:
    """One range test, its files in `out`, its line printed and kept in `summary`."""
    result = find_lr(
        cfg,
        phase,
        args.steps,
        cache_dir=args.cache_dir,
        progress=False,
        say=_quiet,
        after_frozen=after,
    )
    save_result(result, out)
    what = f"{cfg.preset} {phase}{' after frozen' if after else ''} seed {cfg.train.seed}"
    what += f" ({result.setting})"
    row = {"what": what, **result.rates, "steps": len(result.lrs), "stopped": result.stopped,
           "seconds": result.seconds, "load": os.getloadavg()[0]}  # fmt: skip
    summary["finds"].append(row)
    print(f"lr-find {what}: valley {result.rates['valley']}, steepest "
          f"{result.rates['steepest']}, {len(result.lrs)} steps ({result.stopped}), "
          f"{result.seconds:.0f} s, load {row['load']:.1f}", flush=True)  # fmt: skip
    return result.rates


def _g(value: float | None) -> str:
    return "none" if value is None else f"{value:.3g}"


def _quiet(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
