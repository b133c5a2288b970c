"""Test-set evaluation: top-1, top-5, F1, calibration, per class and per superclass."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifar100.data.augment import to_float_nchw
from cifar100.data.tensors import ImageSet, fine_to_coarse
from cifar100.engine.runtime import autocast

PREDICTIONS = "predictions.npz"  # beside evaluation.json in a run directory


def variant_suffix(which: str = "last", tta_flip: bool = False, ema: bool = False) -> str:
    """ "" for a run's own evaluation (last checkpoint, raw weights, no TTA), else e.g. "-best-tta".

    Other variants go to their own files (evaluation-ema.json, predictions-ema.npz, ...), so
    they never replace the run's record that `report` and `compare` read.
    """
    parts = ([which] if which != "last" else []) + (["ema"] if ema else [])
    return "".join(f"-{p}" for p in parts + (["tta"] if tta_flip else []))


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    amp: bool = True,
    tta_flip: bool = False,
) -> torch.Tensor:
    """Logits (float32, on the CPU) for uint8 (N,H,W,3) images, in inference mode.

    With `tta_flip`, the log of the mean softmax of each image and its mirror image.
    """
    was_training = model.training
    model.eval()
    out = []
    channels_last = device.type in ("cuda", "cpu")  # channels-last: faster on both
    try:
        for lo in range(0, len(images), batch_size):
            batch = images[lo : lo + batch_size].to(device)
            x = to_float_nchw(batch, channels_last)
            with autocast(device, amp):
                logits = model(x).float()
            if tta_flip:
                mirror = to_float_nchw(batch.flip(2), channels_last)  # (N,H,W,3): W is dim 2
                with autocast(device, amp):
                    flipped = model(mirror).float()
                # Log of the averaged probabilities: softmax of it is the mean, and the
                # cross-entropy loss below is the averaged prediction's.
                probs = (logits.softmax(1) + flipped.softmax(1)) / 2
                logits = probs.clamp_min(1e-12).log()
            out.append(logits.cpu())
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
        **f1_scores(pred, labels, classes),
        "calibration": calibration(logits, labels),
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


def f1_scores(pred: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Macro-F1 and per-class precision, recall, F1 and support.

    The macro mean is over the classes that occur in the labels or the predictions (as
    scikit-learn does), so a class absent from a small test set does not count as F1 = 0.
    """
    k = len(classes)
    tp = torch.bincount(labels[pred == labels], minlength=k).double()
    predicted = torch.bincount(pred, minlength=k).double()
    support = torch.bincount(labels, minlength=k).double()
    precision = tp / predicted.clamp(min=1)
    recall = tp / support.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    present = (support + predicted) > 0
    return {
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class_prf": {
            c: {
                "precision": round(float(p), 4),
                "recall": round(float(r), 4),
                "f1": round(float(f), 4),
                "support": int(n),
            }
            for c, p, r, f, n in zip(classes, precision, recall, f1, support)
        },
    }


def calibration(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error over equal-width confidence bins, with each bin's data.

    A bin i holds confidences in (i/bins, (i+1)/bins]; ECE = sum over bins of
    count/N * |accuracy - mean confidence|. The bins are a reliability diagram's bars.
    """
    n = len(labels)
    if n == 0:
        return {"ece": float("nan"), "bins": []}
    conf, pred = logits.double().softmax(1).max(1)
    correct = (pred == labels).double()
    # ceil(conf * bins) - 1 puts a confidence exactly on an edge in the lower bin.
    index = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.bincount(index, weights=conf, minlength=bins)
    hit_sum = torch.bincount(index, weights=correct, minlength=bins)
    mean_conf = conf_sum / count.clamp(min=1)
    accuracy = hit_sum / count.clamp(min=1)
    ece = float(((count / n) * (accuracy - mean_conf).abs()).sum())
    return {
        "ece": ece,
        "bins": [
            {
                "lower": round(i / bins, 6),
                "upper": round((i + 1) / bins, 6),
                "count": int(count[i]),
                "confidence": float(mean_conf[i]) if count[i] else None,
                "accuracy": float(accuracy[i]) if count[i] else None,
            }
            for i in range(bins)
        ],
    }


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
    logits = predict_logits(model, data.images, device, batch_size, amp, tta_flip)
    return classification_metrics(logits, data.labels, data.classes, fine_to_coarse, coarse_classes)


def evaluate_checkpoint(
    target: str | Path,
    which: str = "last",
    data_path: str | None = None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    tta_flip: bool = False,
    ema: bool = False,
    predictions_path: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate a run directory's (or a file's) checkpoint on its data's test split.

    Also writes the test predictions (see `save_predictions`) to `predictions_path`, by
    default RUN_DIR/predictions{variant}.npz or FILE.predictions{variant}.npz. When the
    checkpoint keeps an EMA, the plain evaluation also reports it (as training does).
    """
    from cifar100.data import load_data
    from cifar100.engine.checkpoint import load_checkpoint, resolve_checkpoint, restore_model
    from cifar100.engine.runtime import select_device, tune_backends
    from cifar100.paths import resolve_cache_dir

    path = resolve_checkpoint(target, which)
    state = load_checkpoint(path)
    model, cfg = restore_model(state, path)
    if ema:
        _load_ema(model, state, path)
    dev = select_device(device)
    tune_backends(dev)
    data_cfg = replace(cfg.data, path=data_path) if data_path else cfg.data
    splits = load_data(
        data_cfg, resolve_cache_dir(cache_dir), seed=cfg.train.seed, progress=progress
    )
    test = splits.test
    _check_classes(state["classes"], test.classes, data_cfg.path or data_cfg.dataset)
    model.to(dev)
    mapping = state.get("fine_to_coarse") or fine_to_coarse(test)
    coarse = state.get("coarse_classes") or test.coarse_classes
    batch_size = batch_size or cfg.train.eval_batch_size
    logits = predict_logits(model, test.images, dev, batch_size, cfg.train.amp, tta_flip)
    metrics = classification_metrics(logits, test.labels, test.classes, mapping, coarse)
    if not ema and not tta_flip and isinstance(state.get("ema"), dict):
        ema_model, _ = restore_model(state, path)
        _load_ema(ema_model, state, path)
        summary = evaluate_model(ema_model.to(dev), test, dev, batch_size, cfg.train.amp)
        metrics["ema"] = {k: summary[k] for k in ("loss", "top1", "top5")}
    variant = variant_suffix(which, tta_flip, ema)
    if predictions_path is None:
        target, name = Path(target), f"predictions{variant}"
        predictions_path = (
            target / f"{name}.npz" if target.is_dir() else target.with_suffix(f".{name}.npz")
        )
    # Variants keep their logits only: the images (30 MB for CIFAR-100) are the plain one's.
    save_predictions(predictions_path, logits, test, mapping, coarse, images=variant == "")
    extra: dict[str, Any] = {"tta": "flip" if tta_flip else "none"}
    if ema:
        extra["weights"] = "ema"
        extra["ema_updates"] = int(state["ema"].get("updates", 0))
    return {
        "checkpoint": str(path),
        "epoch": state.get("epoch"),  # whole epochs trained
        # A run stopped mid-epoch: this many steps of the next epoch are in the weights too.
        **({"steps_into_next_epoch": state["position"]["step"]} if state.get("position") else {}),
        "dataset": splits.name,
        **extra,
        **metrics,
        "predictions": str(predictions_path),
    }


def save_predictions(
    path: str | Path,
    logits: torch.Tensor,
    data: ImageSet,
    fine_to_coarse: list[int] | None = None,
    coarse_classes: list[str] | None = None,
    images: bool = True,
) -> None:
    """Labels, logits, class names and (unless `images` is False) the test images the example
    grids show, with their indices, in one .npz, written atomically, for the plots."""
    from cifar100.plots.predictions import example_indices
    from cifar100.predictions_file import write_predictions

    arrays: dict[str, np.ndarray] = {
        "labels": data.labels.cpu().numpy().astype(np.int64),
        "logits": logits.float().cpu().numpy().astype(np.float32),
        "classes": np.array(data.classes, dtype=str),
    }
    if images:  # 72 images at most, not the whole test set (30 MB for CIFAR-100)
        labels, preds = arrays["labels"], arrays["logits"].argmax(axis=1)
        shown = np.union1d(
            example_indices(labels, preds), example_indices(labels, preds, only_wrong=True)
        )
        arrays["image_index"] = shown.astype(np.int64)
        arrays["images"] = data.images[torch.from_numpy(shown)].cpu().numpy().astype(np.uint8)
    if fine_to_coarse is not None and coarse_classes is not None:
        arrays["coarse_classes"] = np.array(coarse_classes, dtype=str)
        arrays["fine_to_coarse"] = np.array(fine_to_coarse, dtype=np.int64)
    write_predictions(path, arrays)


def _load_ema(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    from cifar100.engine.checkpoint import load_weights
    from cifar100.errors import CheckpointError

    ema = state.get("ema")
    if not isinstance(ema, dict) or "model" not in ema:
        raise CheckpointError(
            f"{path}: no EMA weights in this checkpoint (train with --set train.ema_decay=0.999 "
            "to keep them); evaluate without --ema"
        )
    load_weights(model, ema["model"], path, "EMA weights")


def _check_classes(trained: list[str], found: list[str], source: str) -> None:
    from cifar100.errors import DataError

    if list(trained) != list(found):
        raise DataError(
            f"{source}: its classes differ from the checkpoint's "
            f"({len(found)} vs {len(trained)} classes); evaluate on the data the "
            "model was trained for"
        )
