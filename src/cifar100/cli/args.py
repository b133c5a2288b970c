"""Argument pieces more than one command shares: checked numbers, and the common flags."""

from __future__ import annotations

import argparse
import math

from cifar100.config import CHOICES, RANGES, DataConfig

DEVICE_HELP = " | ".join(CHOICES["train.device"])
DEVICE_DEFAULT_HELP = f"{DEVICE_HELP} (default: auto: CUDA, then Apple MPS, then the CPU)"
CHECKPOINTS = ("last", "best")  # of a run directory
STRICT_HELP = (
    "refuse an image folder holding files that are not readable images, instead of skipping "
    "them with a warning (data.strict)"
)


def at_least(low: float, kind: type = int, strict: bool = False):
    """An argparse type: a `kind` number >= low (> low if `strict`), finite."""
    word = "a whole number" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {word}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(
                f"must be {word} {'>' if strict else '>='} {low:g}, got {text}"
            )
        return value

    parse.__name__ = "int" if kind is int else "float"  # argparse names the type in messages
    return parse


def share(text: str) -> float:
    """An argparse type: a share in (0, 1], as train.ood_acceptance takes it."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a share in (0, 1], e.g. 0.95; got {text}")
    return value


share.__name__ = "float"


def add_model_target(p: argparse.ArgumentParser, dest: str) -> None:
    """The trained model a command reads: a run directory, a checkpoint or an export."""
    p.add_argument(
        dest,
        metavar="RUN_OR_CHECKPOINT",
        help="a run directory, a checkpoint (.pt) or an export (.safetensors, .onnx)",
    )


def add_checkpoint_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        choices=CHECKPOINTS,
        default=None,
        help="which checkpoint of a run directory (default: the one its test used: best.pt, "
        "the best validation epoch's, unless it was trained with --final last)",
    )


def add_common(
    p: argparse.ArgumentParser, device: bool = True, device_help: str = DEVICE_DEFAULT_HELP
) -> None:
    """--cache-dir, --device (train.device for train) and --no-progress."""
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="downloads and decoded data (default: $CIFAR100_CACHE or the user cache dir)",
    )
    if device:
        p.add_argument("--device", default=None, help=device_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_image_size(p: argparse.ArgumentParser, given_only: bool = False) -> None:
    """--image-size N: the side image folders are decoded to (data.image_size); given_only:
    None where not given (the command picks), else the settings type's default."""
    p.add_argument(
        "--image-size",
        type=at_least(RANGES["data.image_size"][0]),
        default=None if given_only else DataConfig.image_size,
        metavar="N",
        help=f"image folders are decoded to N x N (default: {DataConfig.image_size})",
    )
