"""Test-set evaluation: top-1, top-5, per class and per superclass."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cifar100.data.augment import to_float_nchw
from cifar100.data.tensors import ImageSet, fine_to_coarse
from cifar100.engine.runtime import autocast


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    amp: bool = True,
) -> torch.Tensor:
    """Logits (float32, on the CPU) for uint8 (N,H,W,3) images, in inference mode."""
    was_training = model.training
    model.eval()
    out = []
    channels_last = device.type in ("cuda", "cpu")  # channels-last: faster on both
    try:
        for lo in range(0, len(images), batch_size):
            x = to_float_nchw(images[lo : lo + batch_size].to(device), channels_last)
            with autocast(device, amp):
                out.append(model(x).float().cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


def classification_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    fine_to_coarse: list[int] | None = None,
    coarse_classes: list[str] | None = None,
) -> dict[str, Any]:
    """Loss, top-1, top-5 and per-class accuracy; per superclass where superclasses exist."""
    labels = labels.long().cpu()
    n = len(labels)
    pred = logits.argmax(1)
    correct = pred == labels
    k = min(5, logits.shape[1])
    top5 = (logits.topk(k, dim=1).indices == labels[:, None]).any(1)
    counts = torch.bincount(labels, minlength=len(classes)).clamp(min=1)
    per_class = torch.bincount(labels, weights=correct.double(), minlength=len(classes)) / counts
    result: dict[str, Any] = {
        "images": n,
        "loss": float(F.cross_entropy(logits, labels)) if n else float("nan"),
        "top1": float(correct.double().mean()) if n else float("nan"),
        "top5": float(top5.double().mean()) if n else float("nan"),
        "per_class": {c: round(float(a), 4) for c, a in zip(classes, per_class)},
    }
    if fine_to_coarse is not None and coarse_classes is not None:
        mapping = torch.tensor(fine_to_coarse)
        true_coarse = mapping[labels]
        superclass_hit = mapping[pred] == true_coarse
        n_coarse = len(coarse_classes)
        sc_counts = torch.bincount(true_coarse, minlength=n_coarse).clamp(min=1)
        fine_in_sc = torch.bincount(true_coarse, weights=correct.double(), minlength=n_coarse)
        sc_hit = torch.bincount(true_coarse, weights=superclass_hit.double(), minlength=n_coarse)
        result["superclass_top1"] = float(superclass_hit.double().mean()) if n else float("nan")
        result["per_superclass"] = {
            c: {"fine_top1": round(float(f / m), 4), "superclass_top1": round(float(s / m), 4)}
            for c, f, s, m in zip(coarse_classes, fine_in_sc, sc_hit, sc_counts)
        }
    return result


def evaluate_model(
    model: nn.Module,
    data: ImageSet,
    device: torch.device,
    batch_size: int = 256,
    amp: bool = True,
    fine_to_coarse: list[int] | None = None,
    coarse_classes: list[str] | None = None,
) -> dict[str, Any]:
    logits = predict_logits(model, data.images, device, batch_size, amp)
    return classification_metrics(logits, data.labels, data.classes, fine_to_coarse, coarse_classes)


def evaluate_checkpoint(
    target: str | Path,
    which: str = "last",
    data_path: str | None = None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a run directory's (or a file's) checkpoint on its data's test split."""
    from cifar100.data import load_data
    from cifar100.engine.checkpoint import load_checkpoint, resolve_checkpoint, restore_model
    from cifar100.engine.runtime import select_device
    from cifar100.paths import resolve_cache_dir

    path = resolve_checkpoint(target, which)
    state = load_checkpoint(path)
    model, cfg = restore_model(state)
    dev = select_device(device)
    data_cfg = replace(cfg.data, path=data_path) if data_path else cfg.data
    splits = load_data(
        data_cfg, resolve_cache_dir(cache_dir), seed=cfg.train.seed, progress=progress
    )
    _check_classes(state["classes"], splits.test.classes, data_cfg.path or data_cfg.dataset)
    model.to(dev)
    metrics = evaluate_model(
        model,
        splits.test,
        dev,
        batch_size or cfg.train.eval_batch_size,
        cfg.train.amp,
        state.get("fine_to_coarse") or fine_to_coarse(splits.test),
        state.get("coarse_classes") or splits.test.coarse_classes,
    )
    metrics = {
        "checkpoint": str(path),
        "epoch": state.get("epoch"),
        "dataset": splits.name,
        **metrics,
    }
    return metrics


def _check_classes(trained: list[str], found: list[str], source: str) -> None:
    from cifar100.errors import DataError

    if list(trained) != list(found):
        raise DataError(
            f"{source}: its classes differ from the checkpoint's "
            f"({len(found)} vs {len(trained)} classes); evaluate on the data the "
            "model was trained for"
        )
