"""Training and inference throughput of a backbone, beside a plain eager fp32 baseline; and a
trained model's inference in PyTorch beside ONNX Runtime.

    cifar100 bench --backbone resnet50v2 --size 224 --batch-size 128
    cifar100 bench runs/my-run            # PyTorch vs ONNX Runtime, CPU, images/s and ratio

Both variants run in the same process on the same random data, one after the other, so the
ratio holds on a shared, noisy machine where the absolute numbers do not.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cifar100.config import ModelConfig, TrainConfig
from cifar100.engine.optim import build_optimizer
from cifar100.engine.runtime import autocast, select_device, tune_backends
from cifar100.models.registry import build_model


@dataclass
class Variant:
    name: str
    amp: bool
    channels_last: bool
    compile: bool
    fused: bool
    autotune: bool  # CUDA: cuDNN's autotuner and TF32 matmuls (engine.runtime.tune_backends)


def variants(device: torch.device, compile: bool) -> list[Variant]:
    """The eager fp32 baseline, and what this tool trains with on `device`."""
    cuda = device.type == "cuda"
    tuned = Variant("tuned", cuda, channels_last=True, compile=compile, fused=True, autotune=True)
    return [Variant("eager fp32", False, False, False, False, False), tuned]


def _timed(fn, warmup: int, steps: int, device: torch.device) -> float:
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


def measure(
    backbone: str,
    size: int,
    batch_size: int,
    variant: Variant,
    device: torch.device,
    warmup: int = 3,
    steps: int = 10,
) -> dict:
    """Images/s of one training step and of one inference batch at `size` x `size`."""
    torch.manual_seed(0)
    if device.type == "cuda":  # PyTorch's defaults for the baseline, ours for the tuned run
        torch.backends.cudnn.benchmark = False
        torch.set_float32_matmul_precision("highest")
        if variant.autotune:
            tune_backends(device)
    model = build_model(ModelConfig(backbone=backbone, weights="none", resize=1), 100)
    model.to(device)
    fmt = torch.channels_last if variant.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    step_model = torch.compile(model) if variant.compile else model
    x = (torch.rand(batch_size, 3, size, size, device=device) * 255).contiguous(memory_format=fmt)
    y = torch.randint(0, 100, (batch_size,), device=device)
    cfg = TrainConfig(optimizer="sgd")
    optimizer = build_optimizer([model], cfg, "finetune")
    if not variant.fused:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)

    def train_step():
        with autocast(device, variant.amp):
            loss = F.cross_entropy(step_model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer():
        with autocast(device, variant.amp):
            step_model(x)

    model.train()
    train_s = _timed(train_step, warmup, steps, device)
    model.eval()
    infer_s = _timed(infer, warmup, steps, device)
    return {
        "variant": variant.name,
        "train_img_s": batch_size / train_s,
        "infer_img_s": batch_size / infer_s,
    }


def run_bench(
    backbone: str = "resnet50v2",
    size: int = 224,
    batch_size: int = 64,
    device: str = "auto",
    compile: bool = False,
    warmup: int = 3,
    steps: int = 10,
) -> dict:
    """Measure every variant; the result names the machine and the ratios to the baseline."""
    dev = select_device(device)
    rows = [
        measure(backbone, size, batch_size, v, dev, warmup, steps) for v in variants(dev, compile)
    ]
    base = rows[0]
    for r in rows:
        r["train_ratio"] = r["train_img_s"] / base["train_img_s"]
        r["infer_ratio"] = r["infer_img_s"] / base["infer_img_s"]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
    return {
        "backbone": backbone,
        "size": size,
        "batch_size": batch_size,
        "device": name,
        "torch": torch.__version__,
        "rows": rows,
    }


def run_runtime_bench(target: str, batch_size: int = 64, warmup: int = 3, steps: int = 10) -> dict:
    """Inference images/s of a trained model (a run, checkpoint or export) in PyTorch and in
    ONNX Runtime on the CPU, one after the other in this process, on the same random images.

    The other runtime's model is made for the comparison: a run or checkpoint is exported to
    a temporary ONNX file; for an ONNX file, its PyTorch model is rebuilt from the settings it
    carries (random weights: the speed does not depend on them).
    """
    import tempfile
    from pathlib import Path

    from cifar100.models.registry import build_model
    from cifar100.trained_model import from_weights, load

    given = load(target, device="cpu")
    info, size = given.info, given.image_size
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (batch_size, size, size, 3), np.uint8))
    with tempfile.TemporaryDirectory() as tmp:
        if given.runtime == "onnx":
            weights = build_model(info.model, len(info.classes)).state_dict()
            models = {
                "pytorch": from_weights(info, weights, given.source, "cpu"),
                "onnxruntime": given,
            }
        else:
            from cifar100.export.formats import metadata
            from cifar100.export.onnx_file import export_onnx
            from cifar100.export.onnx_runtime import load_onnx, seal_onnx

            path = Path(tmp) / "model.onnx"
            export_onnx(given.module, size, metadata(given), path, images[:8].numpy())
            seal_onnx(path)
            models = {"pytorch": given, "onnxruntime": load_onnx(path)}
        rows = [
            {
                "variant": name,
                "infer_img_s": batch_size
                / _timed(
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
    import onnxruntime

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


def format_bench(result: dict) -> str:
    lines = [
        f"{result['backbone']} at {result['size']}x{result['size']}, batch "
        f"{result['batch_size']}, on {result['device']} (torch {result['torch']})",
        f"{'variant':<12} {'train img/s':>12} {'ratio':>6} {'infer img/s':>12} {'ratio':>6}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['variant']:<12} {r['train_img_s']:>12.1f} {r['train_ratio']:>6.2f} "
            f"{r['infer_img_s']:>12.1f} {r['infer_ratio']:>6.2f}"
        )
    return "\n".join(lines)
