"""`cifar100 bench`: training and inference images/s against an eager fp32 baseline."""

from __future__ import annotations

import argparse
import json
import sys

from cifar100.cli.args import DEVICE_DEFAULT_HELP, at_least
from cifar100.cli.threads import use_free_cores

HELP = "measure training and inference images/s against an eager fp32 baseline"
DESCRIPTION = (
    "Time a training step and an inference batch of a backbone on random data, as a plain "
    "eager fp32 model and as this tool runs it (channels-last, fused optimizer; bf16 autocast "
    "and cuDNN autotuning on CUDA; torch.compile with --compile), in the same process, and "
    "print the ratios. Absolute numbers on a shared machine are noisy; the ratio is not."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help="a trained model (run, checkpoint or export): its inference in PyTorch beside "
        "ONNX Runtime on the CPU, instead of a backbone's training and inference",
    )
    p.add_argument(
        "--backbone",
        default="resnet50v2",
        metavar="NAME",
        help="the backbone to time, with random weights (default: resnet50v2)",
    )
    p.add_argument(
        "--size",
        type=at_least(8),
        default=None,
        metavar="PX",
        help="input side (default: the backbone's native size, 224 for resnet50v2)",
    )
    p.add_argument(
        "--batch-size", type=at_least(1), default=64, metavar="N",
        help="images per step (default: 64)",
    )  # fmt: skip
    p.add_argument(
        "--steps", type=at_least(1), default=10, metavar="N",
        help="timed steps, of which the median is shown (default: 10)",
    )  # fmt: skip
    p.add_argument(
        "--warmup", type=at_least(0), default=3, metavar="N",
        help="untimed steps first (default: 3)",
    )  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the tuned variant")
    p.add_argument("--device", default="auto", help=DEVICE_DEFAULT_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    # Imported here, not above, to keep the CLI's start fast: the bench loads torch.
    from cifar100.bench import format_runtime_bench, run_runtime_bench
    from cifar100.engine.throughput import format_bench, run_bench
    from cifar100.models.registry import get_backbone

    use_free_cores()
    if args.model:
        result = run_runtime_bench(args.model, args.batch_size, args.warmup, args.steps)
        print(json.dumps(result, indent=2) if args.json else format_runtime_bench(result))
        return 0
    size = args.size or get_backbone(args.backbone).native_size
    say_plan(args, size)
    result = run_bench(args.backbone, size, args.batch_size, args.device, args.compile,
                       args.warmup, args.steps)  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def say_plan(args: argparse.Namespace, size: int) -> None:
    """Before the minutes of timing: what bench will do, and roughly how long it takes here."""
    # Imported here, not above, to keep the CLI's start fast: they load torch.
    from cifar100.engine.estimate import bench_lines, bench_times
    from cifar100.engine.throughput import variants
    from cifar100.runtime.device import select_device

    device = select_device(args.device)
    names = [v.name for v in variants(device, args.compile)]
    times = bench_times(args.backbone, size, args.batch_size, device)
    for line in bench_lines(args.backbone, size, args.batch_size, names, args.warmup,
                            args.steps, times):  # fmt: skip
        print(line, file=sys.stderr, flush=True)
