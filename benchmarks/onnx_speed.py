"""CPU inference images/s of a trained model in PyTorch, ONNX Runtime fp32 and ONNX Runtime int8,
in one process, interleaved, as a ratio to PyTorch; and the same for the report's seed model at
224x224 (random weights: the speed does not depend on them).

    python benchmarks/onnx_speed.py runs/cpu-finetune                  # exports it to temp files
    python benchmarks/onnx_speed.py runs/cpu-finetune --int8 runs/cpu-finetune/model.int8.onnx
    python benchmarks/onnx_speed.py --seed-only --batch-size 16

A run's int8 file is calibrated on its training images (cifar100 export --quantize int8); the
seed model's int8 variant is calibrated on random images, which gives its speed, not its
accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cifar100.bench import cpu_name
from cifar100.config import load_preset
from cifar100.cpu_threads import fit_threads
from cifar100.export.onnx_file import export_onnx, quantize_onnx_int8
from cifar100.export.onnx_metadata import metadata, seal_onnx
from cifar100.models.registry import build_model
from cifar100.runtime.model_info import ModelInfo
from cifar100.runtime.trained_model import TrainedModel, from_weights, load


def onnx_variants(model: TrainedModel, folder: Path, int8: str | None, calibrate: np.ndarray):
    """{"onnxruntime fp32": ..., "onnxruntime int8": ...} for `model` (a torch TrainedModel)."""
    fp32 = folder / f"{id(model)}.onnx"
    export_onnx(model.module, model.image_size, metadata(model), fp32, calibrate[:8])
    seal_onnx(fp32)
    variants = {"onnxruntime fp32": load(fp32)}
    if int8:
        variants["onnxruntime int8"] = load(int8)
    else:
        q = folder / f"{id(model)}.int8.onnx"
        quantize_onnx_int8(fp32, q, calibrate)
        seal_onnx(q)
        variants["onnxruntime int8"] = load(q)
    return variants


def seed_model() -> TrainedModel:
    cfg = load_preset("seed")
    cfg.model.weights = "none"
    info = ModelInfo(config=cfg, classes=[f"class{i}" for i in range(100)], image_size=32)
    weights = build_model(cfg.model, 100).state_dict()
    return from_weights(info, weights, Path("seed preset (random weights)"), "cpu")


def time_models(models: dict[str, TrainedModel], batch: int, steps: int, reps: int) -> list:
    rng = np.random.default_rng(0)
    size = next(iter(models.values())).image_size
    images = torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), np.uint8))
    for m in models.values():  # warm-up: allocators, ORT's first-run optimisations
        m.logits(images, batch)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(reps):
        for name, m in models.items():
            start = time.perf_counter()
            for _ in range(steps):
                m.logits(images, batch)
            times[name].append((time.perf_counter() - start) / steps)
    base = statistics.median(times[next(iter(models))])
    return [
        {
            "runtime": name,
            "img_s": batch / statistics.median(t),
            "range": (batch / max(t), batch / min(t)),
            "ratio": base / statistics.median(t),
        }
        for name, t in times.items()
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("run", nargs="?", help="a trained run (or checkpoint, or safetensors file)")
    p.add_argument("--int8", help="its int8 ONNX export (default: quantise on random images)")
    p.add_argument("--seed-only", action="store_true", help="only the seed model at 224")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed-batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    fit_threads()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        if args.run and not args.seed_only:
            jobs.append(("run", load(args.run, device="cpu"), args.int8, args.batch_size))
        jobs.append(("seed", seed_model(), None, args.seed_batch_size))
        for label, model, int8, batch in jobs:
            rng = np.random.default_rng(1)
            calibrate = rng.integers(0, 256, (64, model.image_size, model.image_size, 3), np.uint8)
            models = {"pytorch": model, **onnx_variants(model, Path(tmp), int8, calibrate)}
            rows = time_models(models, batch, args.steps, args.reps)
            results[label] = {"model": str(model.source), "backbone": model.backbone,
                              "input": model.image_size * model.info.model.resize,
                              "batch": batch, "rows": rows}  # fmt: skip
    print(f"{cpu_name()}, torch {torch.__version__}; median of {args.reps} runs of {args.steps} "
          "batches (range), ratio to PyTorch")  # fmt: skip
    for r in results.values():
        print(
            f"\n{r['model']}: {r['backbone']}, {r['input']}x{r['input']} inside, batch {r['batch']}"
        )
        for row in r["rows"]:
            lo, hi = row["range"]
            print(f"  {row['runtime']:<18} {row['img_s']:8.1f} img/s ({lo:.0f}-{hi:.0f})  "
                  f"{row['ratio']:.2f}x")  # fmt: skip
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
