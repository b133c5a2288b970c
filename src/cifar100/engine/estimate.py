"""Before a run starts: how long it should take on this device, measured on the spot.

A warm-up step, then a couple of timed training steps (and inference batches) of the run's own
model, with random weights on random images at the run's size; the per-image times, times the
images the run will see, are the estimate. It says it is one, and what it leaves out. On a CPU,
a long estimate also names the presets made for a CPU. `cifar100 bench` says its plan the same
way before it starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from cifar100.bench import cpu_name
from cifar100.config import Config, ModelConfig, TrainConfig
from cifar100.data.cifar_sources import SOURCES
from cifar100.engine.optim import build_optimizer
from cifar100.engine.throughput import time_steps_of
from cifar100.models.registry import build_model

CPU_PRESETS = ("cpu-finetune", "cpu")  # the presets made for a machine without a GPU
CPU_ADVICE = (
    "--preset cpu-finetune (84.05% on CIFAR-10's JPEGs in 7 min 50 s on 2 cores, "
    "docs/results.md) or --preset cpu (frozen features, a head that retrains in seconds)"
)
LONG_ON_CPU_S = 30 * 60  # past this, a CPU run is told about the CPU presets
# A CPU's time per image depends little on the batch beyond a few dozen images: time a smaller
# one than a large preset's (seed's 128 images at 224 px take many seconds a step there).
CPU_TIMING_BATCH = 32


@dataclass(frozen=True)
class StepTimes:
    """Seconds per image of a training step and of an inference batch, as timed here."""

    train_s: float
    infer_s: float
    batch: int  # images per timed step
    steps: int  # timed steps of each kind (after untimed warm-up ones)
    device: str  # "cpu", "cuda", "mps"
    device_name: str


@dataclass(frozen=True)
class RunEstimate:
    """What a run will do and how long that should take, from StepTimes."""

    times: StepTimes
    epochs: int
    train_images: int | None  # None: an image folder, counted only when it is read
    other_images: int  # validated each epoch, tested once (and featurised, in features mode)
    features: bool  # train.mode features: one pass of the backbone, then the head alone

    @property
    def seconds(self) -> float | None:
        t = self.times
        if self.train_images is None:
            return None
        if self.features:  # the backbone once over every image; the head's epochs are seconds
            return (self.train_images + self.other_images) * t.infer_s
        return self.epochs * self.train_images * t.train_s + self.other_images * t.infer_s


def time_steps(cfg: Config, device: torch.device, steps: int = 3, warmup: int = 2) -> StepTimes:
    """Time `steps` training steps and inference batches of `cfg`'s model after `warmup`
    untimed ones (a CPU's first steps are several times slower: allocation, kernel choice)."""
    batch = cfg.train.batch_size
    if device.type == "cpu":
        batch = min(batch, CPU_TIMING_BATCH)
    model_cfg = dataclasses.replace(cfg.model, weights="none", init=None)  # shapes, not values
    classes = cfg.data.class_count() or 100
    size = cfg.data.decoded_size()
    return time_model(model_cfg, classes, size, batch, cfg.train, device, warmup, steps)


def time_model(
    model_cfg: ModelConfig, classes: int, size: int, batch: int, train_cfg: TrainConfig,
    device: torch.device, warmup: int, steps: int,
) -> StepTimes:  # fmt: skip
    """Seconds per image of a training step and an inference batch of a model on random data."""
    torch.manual_seed(0)
    model = build_model(model_cfg, num_classes=classes).to(device)
    fmt = torch.channels_last if train_cfg.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    x = (torch.rand(batch, 3, size, size, device=device) * 255).contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (batch,), device=device)
    optimizer = build_optimizer([model], train_cfg, "finetune")
    train_s, infer_s = time_steps_of(model, model, optimizer, x, y, device, train_cfg.amp,
                                     warmup, steps)  # fmt: skip
    names = {"cuda": lambda: torch.cuda.get_device_name(device), "mps": lambda: "Apple MPS"}
    name = names.get(device.type, cpu_name)()
    return StepTimes(train_s / batch, infer_s / batch, batch, steps, device.type, name)


def bench_times(backbone: str, size: int, batch: int, device: torch.device) -> StepTimes:
    """One training step and one inference batch of bench's model, timed cold: on the high side."""
    model_cfg = ModelConfig(backbone=backbone, weights="none", resize=1)
    return time_model(model_cfg, 100, size, batch, TrainConfig(optimizer="sgd"), device, 0, 1)


def run_images(cfg: Config) -> tuple[int | None, int]:
    """(training images, validation + test images) of `cfg`'s data; None where unknown yet."""
    source = SOURCES.get(cfg.data.dataset)
    if source is None:
        return None, 0
    train = len(source.train_members) * source.train_member_images
    test = source.test_member_images
    if cfg.data.limit_train is not None:
        train = min(train, cfg.data.limit_train)
    if cfg.data.limit_test is not None:
        test = min(test, cfg.data.limit_test)
    val = round(train * cfg.data.val_fraction)
    return train - val, val * cfg.train.epochs + test


def estimate_run(cfg: Config, times: StepTimes) -> RunEstimate:
    train, other = run_images(cfg)
    return RunEstimate(times, cfg.train.epochs, train, other, cfg.train.mode == "features")


def duration(seconds: float) -> str:
    """A duration as a person reads it: 40 s, 12 min, 3.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_lines(est: RunEstimate, preset: str) -> list[str]:
    """What to print before the run: the estimate, how it was made, and advice on a CPU."""
    t = est.times
    how = (
        f"(an estimate: the median of {t.steps} training steps of {t.batch} images timed now, "
        "after a warm-up, with random weights; other work on this machine slows it; data "
        "loading not counted"
        + ("; frozen-backbone epochs run faster)" if not est.features else ")")
    )
    per_epoch = 1000 * (t.infer_s if est.features else t.train_s)
    where = "this CPU" if t.device == "cpu" else t.device_name
    seconds = est.seconds
    if seconds is None:
        lines = [
            f"expected time on {where} ({t.device_name}): about {duration(per_epoch)} per "
            f"1,000 training images {'in all' if est.features else 'per epoch'}, for "
            f"{est.epochs} epochs {how}"
        ]
    else:
        what = (
            f"the backbone over {est.train_images + est.other_images:,} images, then the head"
            if est.features
            else f"{est.epochs} epochs of {est.train_images:,} training images"
        )
        lines = [f"expected time on {where} ({t.device_name}): about {duration(seconds)} for "
                 f"{what} {how}"]  # fmt: skip
    if t.device == "cpu" and preset not in CPU_PRESETS and (seconds or 0) > LONG_ON_CPU_S:
        lines.append(
            f"that is a long run for a CPU; the presets made for one take minutes: {CPU_ADVICE}"
            "; Ctrl-C stops this run"
        )
    elif t.device == "cpu" and preset not in CPU_PRESETS and seconds is None:
        lines.append(f"on a CPU, the presets made for one take minutes: {CPU_ADVICE}")
    return lines


def bench_lines(
    backbone: str, size: int, batch: int, variants: list[str], warmup: int, steps: int,
    times: StepTimes,
) -> list[str]:  # fmt: skip
    """`cifar100 bench`'s plan, said before it starts: what it times and roughly how long."""
    per_variant = (warmup + steps) * batch * (times.train_s + times.infer_s)
    return [
        f"bench: {backbone} at {size}x{size}, batch {batch}, on {times.device_name}: "
        f"{' and '.join(variants)}, each {warmup} warm-up + {steps} timed training steps, then "
        "as many inference batches",
        f"expected time: about {duration(per_variant * len(variants))} (an estimate from one "
        "training step and one inference batch timed just now)",
    ]
