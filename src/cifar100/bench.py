"""A trained model's inference in PyTorch beside ONNX Runtime, and the timing both benchmarks
share (the training step's: engine/throughput.py).

    cifar100 bench runs/my-run            # PyTorch vs ONNX Runtime, CPU, images/s and ratio

Both variants run in the same process on the same random data, one after the other, so the
ratio holds on a shared, noisy machine where the absolute numbers do not.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from cifar100.export.onnx_file import export_onnx
from cifar100.export.onnx_metadata import metadata, seal_onnx
from cifar100.runtime.trained_model import from_weights, load, rebuild_model


def timed(fn, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per call: warm-up calls first (compilation, allocator), then the median of runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def run_runtime_bench(target: str, batch_size: int = 64, warmup: int = 3, steps: int = 10) -> dict:
    """Inference images/s of a trained model (a run, checkpoint or export) in PyTorch and in
    ONNX Runtime on the CPU, one after the other in this process, on the same random images.

    The other runtime's model is made for the comparison: a run or checkpoint is exported to
    a temporary ONNX file; for an ONNX file, its PyTorch model is rebuilt from the settings it
    carries (random weights: the speed does not depend on them).
    """
    given = load(target, device="cpu")
    info, size = given.info, given.image_size
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (batch_size, size, size, 3), np.uint8))
    with tempfile.TemporaryDirectory() as tmp:
        if given.runtime == "onnx":
            weights = rebuild_model(info).state_dict()
            models = {
                "pytorch": from_weights(info, weights, given.source, "cpu"),
                "onnxruntime": given,
            }
        else:
            path = Path(tmp) / "model.onnx"
            export_onnx(given.module, size, metadata(given), path, images[:8].numpy())
            seal_onnx(path)
            models = {"pytorch": given, "onnxruntime": load(path)}
        rows = [
            {
                "variant": name,
                "infer_img_s": batch_size
                / timed(
                    lambda m=m: m.logits(images, batch_size), warmup, steps, torch.device("cpu")
                ),
            }
            for name, m in models.items()
        ]
    for r in rows:
        r["infer_ratio"] = r["infer_img_s"] / rows[0]["infer_img_s"]
    return {
        "model": str(given.source),
        "backbone": info.backbone,
        "size": size,
        "resize": info.model.resize,
        "batch_size": batch_size,
        "device": cpu_name(),
        "torch": torch.__version__,
        "onnxruntime": _ort_version(),
        "rows": rows,
    }


def cpu_name() -> str:
    n = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()} CPU, {n} thread{'s' * (n != 1)}"


def _ort_version() -> str:
    return onnxruntime.__version__


def format_runtime_bench(result: dict) -> str:
    lines = [
        f"{result['model']}: {result['backbone']} at {result['size']}x{result['size']} "
        f"(x{result['resize']} inside), batch {result['batch_size']}, on {result['device']} "
        f"(torch {result['torch']}, onnxruntime {result['onnxruntime']})",
        f"{'runtime':<12} {'infer img/s':>12} {'ratio':>6}",
    ]
    for r in result["rows"]:
        lines.append(f"{r['variant']:<12} {r['infer_img_s']:>12.1f} {r['infer_ratio']:>6.2f}")
    return "\n".join(lines)
