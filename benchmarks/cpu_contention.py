"""CPU throughput alone and beside one busy process, for several thread settings.

    python benchmarks/cpu_contention.py                       # Lite0 at 64x64, batch 64
    python benchmarks/cpu_contention.py --reps 5 --backbone resnet50v2 --size 96
    python benchmarks/cpu_contention.py --train     # the cpu-finetune preset on real JPEGs

Each measurement is one `cifar100 bench`-style run (the tuned variant: training steps and
inference batches, median of --steps) in a fresh process, so that OpenMP's settings, read when
torch loads, apply. "busy" runs it beside one CPU-bound process (a Python spin loop, as
another job on a shared machine is; --busy torch: torch matmuls on every core). Settings and
conditions are interleaved, repeated --reps times, and reported as medians with their range,
and as a ratio to the first setting alone. With --train, each measurement is a short
`cifar100 train --preset cpu-finetune` run on the real CIFAR-10 JPEGs instead (--limit
training images, one frozen and one fine-tuning epoch), and the images/s of each phase come
from its metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"

# name -> environment for the measuring process (on top of this one's)
CORES = str(len(os.sched_getaffinity(0)))
SETTINGS = {
    "cifar100 (the free cores)": {},
    "torch's default (every core)": {"OMP_NUM_THREADS": CORES},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    # libgomp spins 300,000 times before a waiting thread sleeps; 1,000 is its own choice once
    # there are more threads than CPUs
    "every core, short OpenMP spin": {"OMP_NUM_THREADS": CORES, "GOMP_SPINCOUNT": "1000"},
}

BUSY = {
    "python": "while True: pass",
    "torch": "import torch\na = torch.randn(512, 512)\nwhile True:\n    a @ a",
}

MEASURE = """
import json, sys
from cifar100.cpu_threads import fit_threads
threads = fit_threads()
import torch
from cifar100.engine.throughput import measure, variants
dev = torch.device("cpu")
tuned = variants(dev, False)[1]
r = measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), tuned, dev, 3, int(sys.argv[4]))
r["threads"] = threads
print(json.dumps(r))
"""


def run_one(args, env: dict[str, str]) -> dict:
    ours = ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
    full = {k: v for k, v in os.environ.items() if k not in ours}
    full.update(env)
    if args.train:
        return train_one(args, full)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURE,
            args.backbone,
            str(args.size),
            str(args.batch_size),
            str(args.steps),
        ],  # fmt: skip
        env=full,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_one(args, env: dict[str, str]) -> dict:
    """One short cpu-finetune run; images/s of its frozen ("train") and fine-tuning epochs."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "cifar100",
                "train",
                "--preset",
                "cpu-finetune",
                "--dataset",
                "folder",
                "--data",
                str(args.data),
                "--epochs",
                "2",
                "--set",
                f"data.limit_train={args.limit}",
                "--set",
                "data.limit_test=200",
                "--set",
                "train.checkpoint_minutes=0",
                "--out",
                str(run),
                "--no-progress",
                "--cache-dir",
                args.cache_dir,
            ],  # fmt: skip
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode:
            raise SystemExit(f"training failed:\n{out.stderr[-2000:]}")
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        threads = json.loads((run / "environment.json").read_text())["torch_threads"]
    return {
        "train_img_s": records[0]["images_per_s"],  # the frozen epoch
        "infer_img_s": records[1]["images_per_s"],  # the fine-tuning epoch
        "threads": threads,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--train", action="store_true", help="short cpu-finetune runs instead")
    p.add_argument("--data", default=str(DATA), help="--train: an image folder or tarball")
    p.add_argument("--limit", type=int, default=3000, help="--train: training images")
    p.add_argument(
        "--busy",
        choices=sorted(BUSY),
        default="python",
        help="the other process: a Python spin loop (one core) or torch matmuls (every core)",
    )
    args = p.parse_args(argv)
    settings = dict(list(SETTINGS.items())[:3]) if args.train else SETTINGS  # runs are long
    if args.train:
        args.cache_dir = tempfile.mkdtemp(prefix="contention-cache-")  # decoded once, shared
    try:
        rows = measure_all(args, settings)
    finally:
        if args.train:
            shutil.rmtree(args.cache_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))


def measure_all(args, settings: dict[str, dict[str, str]]) -> list[dict]:
    results: dict[tuple[str, str], list[dict]] = {}
    for rep in range(args.reps):
        for condition in ("alone", "busy"):
            busy = None
            if condition == "busy":
                busy = subprocess.Popen([sys.executable, "-c", BUSY[args.busy]])
                time.sleep(1.0)
            try:
                for name, env in settings.items():
                    r = run_one(args, env)
                    results.setdefault((name, condition), []).append(r)
                    print(
                        f"rep {rep + 1} {condition:<5} {name:<45} {r['threads']} threads  "
                        f"train {r['train_img_s']:7.1f}  infer {r['infer_img_s']:7.1f} img/s",
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    base_name = next(iter(settings))
    base = {
        k: statistics.median(r[k] for r in results[(base_name, "alone")])
        for k in ("train_img_s", "infer_img_s")
    }
    what = (
        f"cpu-finetune on {args.limit} real CIFAR-10 JPEGs ('train' = its frozen epoch, "
        "'infer' = its fine-tuning epoch)"
        if args.train
        else f"{args.backbone} at {args.size}x{args.size}, batch {args.batch_size}, tuned variant"
    )
    print(
        f"{what}; torch {torch_version()}, "
        f"{len(os.sched_getaffinity(0))} CPUs ({platform.processor() or platform.machine()}), "
        f"{args.reps} runs each, median (min-max); ratio to '{base_name}' alone"
    )
    a, b = ("frozen img/s", "finetune img/s") if args.train else ("train img/s", "infer img/s")
    print(f"{'setting':<45} {'condition':<6} {'threads':>7} {a:>22} {'ratio':>6} "
          f"{b:>24} {'ratio':>6}")  # fmt: skip
    rows = []
    for (name, condition), rs in results.items():
        row = {"setting": name, "condition": condition, "threads": rs[-1]["threads"]}
        for k in ("train_img_s", "infer_img_s"):
            vals = [r[k] for r in rs]
            row[k] = statistics.median(vals)
            row[k + "_range"] = (min(vals), max(vals))
            row[k.replace("img_s", "ratio")] = row[k] / base[k]
        rows.append(row)
        tr, ir = row["train_img_s_range"], row["infer_img_s_range"]
        print(
            f"{name:<45} {condition:<6} {row['threads']:>7} "
            f"{row['train_img_s']:>8.1f} ({tr[0]:.0f}-{tr[1]:.0f}) {row['train_ratio']:>6.2f} "
            f"{row['infer_img_s']:>9.1f} ({ir[0]:.0f}-{ir[1]:.0f}) {row['infer_ratio']:>6.2f}"
        )
    return rows


def torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
