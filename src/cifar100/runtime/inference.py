"""The one batched inference loop: uint8 images in, one tensor per image out, for evaluation,
validation, feature extraction, prediction and export checks alike.

    logits = predict_logits(model, images, device)       # (N, classes), float32, on the CPU
    features = run_batches(images, 256, lambda b: model.features(...), device)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

from cifar100.data.augment import to_float_nchw
from cifar100.data.tensors import ImageSet
from cifar100.metrics import classification_metrics
from cifar100.runtime.device import autocast

__all__ = ["evaluate_model", "model_batches", "predict_logits", "run_batches", "with_flip"]

Batch = Callable[[torch.Tensor], torch.Tensor]  # uint8 (n, H, W, 3) on `device` -> (n, ...)


@torch.no_grad()
def run_batches(
    images: torch.Tensor,
    batch_size: int,
    fn: Batch,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "inference",
) -> torch.Tensor:
    """`fn` over `images` in batches; float32 results on the CPU, in order.

    Results are gathered on the device into one tensor and copied back once, so the host does
    not wait for the device after every batch.
    """
    device = torch.device(device)
    n, out = len(images), None
    # progress: a bar on a terminal only (disable=None), never in a log or a pipe
    bar = tqdm(total=n, desc=desc, unit="img", disable=None if progress else True, leave=False,
               dynamic_ncols=True, file=sys.stderr)  # fmt: skip
    try:
        for lo in range(0, n, batch_size):
            result = fn(images[lo : lo + batch_size].to(device, non_blocking=True)).float()
            if out is None:
                out = torch.empty(n, *result.shape[1:], device=result.device)
            out[lo : lo + len(result)] = result
            bar.update(len(result))
    finally:
        bar.close()
    return torch.empty(0, 0) if out is None else out.cpu()


def with_flip(fn: Batch) -> Batch:
    """Test-time augmentation: the log of the mean softmax of each image and its mirror image
    (its softmax is the mean; the cross-entropy of it is the averaged prediction's)."""

    def both(batch: torch.Tensor) -> torch.Tensor:
        probs = fn(batch).float().softmax(1) + fn(batch.flip(2)).float().softmax(1)  # NHWC
        return (probs / 2).clamp_min(1e-12).log()

    return both


def model_batches(model: nn.Module, device: torch.device, amp: bool, method: str = "forward"):
    """`fn` for run_batches: a torch model (its `method`) on uint8 NHWC batches, as trained."""
    channels_last = device.type in ("cuda", "cpu")  # channels-last: faster on both
    call = getattr(model, method)

    def fn(batch: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            return call(to_float_nchw(batch, channels_last))

    return fn


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    amp: bool = True,
    tta_flip: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Logits (float32, on the CPU) of uint8 (N, H, W, 3) images, in inference mode."""
    was_training = model.training
    model.eval()
    fn = model_batches(model, device, amp)
    try:
        return run_batches(images, batch_size, with_flip(fn) if tta_flip else fn, device,
                           progress, "evaluating")  # fmt: skip
    finally:
        model.train(was_training)


def evaluate_model(
    model: nn.Module,
    data: ImageSet,
    device: torch.device,
    batch_size: int = 256,
    amp: bool = True,
    fine_to_coarse: list[int] | None = None,
    coarse_classes: list[str] | None = None,
    tta_flip: bool = False,
) -> dict[str, Any]:
    """Metrics of a torch model on an ImageSet (validation during training, for one)."""
    logits = predict_logits(model, data.images, device, batch_size, amp, tta_flip)
    return classification_metrics(logits, data.labels, data.classes, fine_to_coarse, coarse_classes)
