"""Training and inference throughput of a backbone, beside a plain eager fp32 baseline.

    cifar100 bench --backbone resnet50v2 --size 224 --batch-size 128

Both variants run in the same process on the same random data, one after the other, so the
ratio holds on a shared, noisy machine where the absolute numbers do not. A training step is
the engine's (its optimizer), so this lives here; the runtime comparison is bench.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cifar100.bench import cpu_name, timed
from cifar100.config import ModelConfig, TrainConfig
from cifar100.engine.optim import build_optimizer
from cifar100.models.registry import build_model
from cifar100.runtime.device import autocast, select_device, tune_backends


@dataclass
class Variant:
    name: str
    amp: bool
    channels_last: bool
    compile: bool
    fused: bool
    autotune: bool  # CUDA: cuDNN's autotuner and TF32 matmuls (runtime.device.tune_backends)


def variants(device: torch.device, compile: bool) -> list[Variant]:
    """The eager fp32 baseline, and what this tool trains with on `device`."""
    cuda = device.type == "cuda"
    tuned = Variant("tuned", cuda, channels_last=True, compile=compile, fused=True, autotune=True)
    return [Variant("eager fp32", False, False, False, False, False), tuned]


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

    train_s, infer_s = time_steps_of(model, step_model, optimizer, x, y, device, variant.amp,
                                     warmup, steps)  # fmt: skip
    return {
        "variant": variant.name,
        "train_img_s": batch_size / train_s,
        "infer_img_s": batch_size / infer_s,
    }


def time_steps_of(
    model: torch.nn.Module, step_model, optimizer, x: torch.Tensor, y: torch.Tensor,
    device: torch.device, amp: bool, warmup: int, steps: int,
) -> tuple[float, float]:  # fmt: skip
    """Median seconds of one training step and of one inference batch on (x, y), after
    `warmup` calls each; `step_model` is what is called (`model` itself, or compiled)."""

    def train_step():
        with autocast(device, amp):
            loss = F.cross_entropy(step_model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer():
        with autocast(device, amp):
            step_model(x)

    model.train()
    train_s = timed(train_step, warmup, steps, device)
    model.eval()
    return train_s, timed(infer, warmup, steps, device)


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
