"""A preset on less data: seeded, class-stratified subsets of an image folder, before and after
train.adapt (issue #23's table, docs/results.md "Small data").

    python benchmarks/small_data.py --data /path/cifar10-jpeg [--sizes 1000 5000 25000]
        [--user 10x100] [--preset cpu-finetune] [--grid] [--out DIR]

--data is an extracted folder with train/<class>/ and test/<class>/ (the real CIFAR-10 JPEGs:
tar xzf ../shared/data/cifar10-jpeg.tar.gz). Each size N takes N / classes images of every
class (each class's files sorted, then shuffled by one random.Random(--seed) in class order),
linked, not copied, into DIR/subN/train/, with the full test/ beside them; --user KxM links
M images of each of the first K classes into one folder with no split (the tool holds out
its own test split, as it does for a user's folder). Then, one run at a time, each size gets:

    frozen   the preset's frozen-backbone epochs alone (the head on ImageNet features)
    before   the preset as written: train.adapt=false, train.final=last
    after    the preset as it now runs: train.adapt and train.final at their defaults
    grid     with --grid: train.lr x train.finetune_bn x train.freeze_epochs (2 fine-tuning
             epochs each, adapt off, both the last and the best validated weights reported)

and prints validation and test top-1, the run's wall time and the load average, with the
machine. Figures are one seed each; the machine's other work is the reader's to note.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

from cifar100.config import apply_overrides, load_preset
from cifar100.engine.train import train
from cifar100.runtime.evaluation import Evaluation
from cifar100.runtime.run_dir import RunDir

GRID = {"train.lr": ["0.02", "0.006", "0.002", "0.0006"], "train.finetune_bn": ["batch", "frozen"],
        "train.freeze_epochs": ["1", "3"]}  # fmt: skip


def link_subsets(src: Path, out: Path, sizes: list[int], user: str | None, seed: int) -> dict:
    """The subset folders (name -> path), made once and reused."""
    classes = sorted(p.name for p in (src / "train").iterdir() if p.is_dir())
    files = {c: sorted((src / "train" / c).iterdir()) for c in classes}
    rng = random.Random(seed)
    for c in classes:
        rng.shuffle(files[c])
    made = {}
    for n in sizes:
        root = out / f"sub{n}"
        for c in classes:
            _link(files[c][: n // len(classes)], root / "train" / c)
        if not (root / "test").exists():
            (root / "test").symlink_to((src / "test").resolve())
        made[f"sub{n}"] = root
    if user:
        k, m = (int(x) for x in user.lower().split("x"))
        root = out / f"user{k}x{m}"
        for c in classes[:k]:
            _link(files[c][:m], root / c)
        made[root.name] = root
    return made


def _link(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        if not (folder / f.name).exists():
            (folder / f.name).symlink_to(f.resolve())


def variants(preset: str, grid: bool) -> list[tuple[str, list[str]]]:
    freeze = load_preset(preset).train.freeze_epochs
    found = [
        ("frozen", [f"train.epochs={freeze}", "train.adapt=false"]),
        ("before", ["train.adapt=false", "train.final=last"]),
        ("after", []),
    ]
    for lr, bn, fz in itertools.product(*GRID.values()) if grid else []:
        sets = [f"train.lr={lr}", f"train.finetune_bn={bn}", f"train.freeze_epochs={fz}"]
        fixed = [f"train.epochs={int(fz) + 2}", "train.adapt=false", "train.final=last"]
        found.append((f"grid {bn} lr {lr} freeze {fz}", [*sets, *fixed]))
    return found


def one_run(preset: str, data: Path, sets: list[str], out: Path, cache: Path) -> dict:
    cfg = apply_overrides(load_preset(preset), ["data.dataset=folder", f"data.path={data}", *sets])
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = train(cfg, out=out, cache_dir=cache, progress=False)
    wall = time.perf_counter() - start
    vals = [m["val_top1"] for m in RunDir(out).read_metrics()]
    best = max(range(len(vals)), key=vals.__getitem__)
    row = {"val": vals, "test": result.test["top1"], "wall_s": wall, "load": load}
    if best + 1 != len(vals) and RunDir(out).best.is_file():  # the best validated weights too
        from cifar100.evaluate import evaluate_checkpoint

        row["test_best"] = evaluate_checkpoint(out, "best", progress=False).top1
    row["recipe"] = (Evaluation.read(RunDir(out).evaluation).final or {}).get("weights")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--data", required=True, help="a folder with train/ and test/ class folders")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 25000])
    p.add_argument("--user", default="10x100", help="KxM: K classes of M images, no split")
    p.add_argument("--preset", default="cpu-finetune")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", action="store_true")
    p.add_argument("--only", nargs="+", help="only these variants (frozen, before, after)")
    p.add_argument("--out", default=None, help="keep the subsets and runs here")
    args = p.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="small-data-"))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}; preset {args.preset}"
    )
    subsets = link_subsets(Path(args.data), root / "data", args.sizes, args.user, args.seed)
    for name, data in subsets.items():
        for label, sets in variants(args.preset, args.grid):
            if args.only and label.split()[0] not in args.only:
                continue
            out = root / "runs" / f"{name}-{label.replace(' ', '-')}"
            if out.exists():
                print(f"{name:>12}  {label:<32} (kept from an earlier call: {out})")
                continue
            r = one_run(args.preset, data, sets, out, root / "cache")
            best = f"  test at best val {r['test_best']:.2%}" if "test_best" in r else ""
            print(
                f"{name:>12}  {label:<32} val {' '.join(f'{v:.2%}' for v in r['val'])}  test "
                f"{r['test']:.2%} ({r['recipe']}){best}  {r['wall_s']:.0f} s  load {r['load']:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
