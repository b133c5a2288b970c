"""Test-set evaluation: top-1, top-5, F1, calibration, per class and per superclass."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifar100.data.tensors import ImageSet, fine_to_coarse
from cifar100.display_text import DISPLAY_LIMIT, display_name, display_names
from cifar100.errors import DataError
from cifar100.metrics import classification_metrics
from cifar100.runtime import run_dir as runs


def variant_suffix(which: str = "last", tta_flip: bool = False, ema: bool = False) -> str:
    """ "" for a run's own evaluation (last checkpoint, raw weights, no TTA), else e.g. "-best-tta".

    Other variants go to their own files (evaluation-ema.json, predictions-ema.npz, ...), so
    they never replace the run's record that `report` and `compare` read.
    """
    parts = ([which] if which != "last" else []) + (["ema"] if ema else [])
    return "".join(f"-{p}" for p in parts + (["tta"] if tta_flip else []))


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
    """Evaluate a trained model (a run directory's checkpoint, a checkpoint, or an export) on
    its data's test split (or the data at `data_path`).

    Also writes the test predictions (see `save_predictions`) to `predictions_path`, by
    default RUN_DIR/predictions{variant}.npz or FILE.predictions{variant}.npz. When the
    checkpoint keeps an EMA, the plain evaluation also reports it (as training does).
    """
    from cifar100.data import load_data
    from cifar100.paths import resolve_cache_dir
    from cifar100.runtime.trained_model import load

    model = load(target, device=device, checkpoint=which, ema=ema)
    info, cfg = model.info, model.info.config
    data_cfg = replace(cfg.data, path=data_path) if data_path else cfg.data
    splits = load_data(
        data_cfg, resolve_cache_dir(cache_dir), seed=cfg.train.seed, progress=progress
    )
    test = splits.test
    _check_classes(info.classes, test.classes, data_cfg.path or data_cfg.dataset)
    if test.image_size != model.image_size:
        raise DataError(
            f"{data_cfg.path or data_cfg.dataset}: its images are {test.image_size}px, the "
            f"model takes {model.image_size}px; evaluate on the data it was trained for"
        )
    mapping = info.fine_to_coarse or fine_to_coarse(test)
    coarse = info.coarse_classes or test.coarse_classes
    batch_size = batch_size or cfg.train.eval_batch_size
    logits = model.logits(test.images, batch_size, tta_flip, progress)
    metrics = classification_metrics(logits, test.labels, test.classes, mapping, coarse)
    if not ema and not tta_flip and info.has_ema:
        average = load(model.source, device=device, ema=True)
        summary = classification_metrics(average.logits(test.images, batch_size), test.labels,
                                         test.classes)  # fmt: skip
        metrics["ema"] = {k: summary[k] for k in ("loss", "top1", "top5") if k in summary}
    agreement = _agreement(model, logits, test) if not tta_flip else None
    variant = variant_suffix(which, tta_flip, ema)
    if predictions_path is None:
        target, name = Path(target), f"predictions{variant}"
        predictions_path = (
            target / f"{name}.npz" if target.is_dir() else target.with_suffix(f".{name}.npz")
        )
    # Variants keep their logits only: the images (30 MB for CIFAR-100) are the plain one's.
    save_predictions(predictions_path, logits, test, mapping, coarse, images=variant == "")
    extra: dict[str, Any] = {"tta": "flip" if tta_flip else "none", "runtime": model.runtime}
    if ema:
        extra["weights"] = "ema"
        extra["ema_updates"] = info.ema_updates
    return {
        "checkpoint": str(model.source),
        "epoch": info.epoch,  # whole epochs trained
        **_train_wall(info.run, info.epoch),
        # A run stopped mid-epoch: this many steps of the next epoch are in the weights too.
        **(
            {"steps_into_next_epoch": info.steps_into_next_epoch}
            if info.steps_into_next_epoch
            else {}
        ),  # fmt: skip
        "dataset": splits.name,
        **extra,
        **metrics,
        **({"agreement": agreement} if agreement else {}),
        "predictions": str(predictions_path),
    }


def _train_wall(run: str | None, epoch: int | None) -> dict[str, Any]:
    """The run's whole wall time, as training recorded it in RUN/evaluation.json for these
    weights: a fact of the run that evaluating it again keeps (compare shows it)."""
    import json

    try:
        path = Path(run) / runs.EVALUATION if run else None
        record = json.loads(path.read_text(encoding="utf-8")) if path else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("epoch") != epoch:
        return {}
    return {"train_wall_s": record["train_wall_s"]} if "train_wall_s" in record else {}


def _agreement(model, logits: torch.Tensor, test: ImageSet) -> dict[str, Any] | None:
    """For an export: how many test predictions differ from its checkpoint's, as that run's
    evaluation recorded them (RUN/predictions.npz), and why they may."""
    from cifar100.errors import CifarError
    from cifar100.predictions_file import read_predictions

    record = Path(model.info.run or "") / runs.PREDICTIONS
    if model.source.suffix == ".pt" or not model.info.run or not record.is_file():
        return None
    try:
        theirs = read_predictions(record)
    except CifarError:
        return None
    if not np.array_equal(theirs["labels"], test.labels.numpy()):
        return None  # evaluated on other images
    differ = int((theirs["logits"].argmax(1) != logits.argmax(1).numpy()).sum())
    quantized = "int8" in model.source.name
    return {
        "compared_with": str(record),
        "images": len(test),
        "differ": differ,
        "why": "int8 quantisation" if quantized else "float rounding in another runtime",
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


def _check_classes(trained: list[str], found: list[str], source: str) -> None:
    if list(trained) != list(found):
        raise DataError(
            f"{source}: its classes differ from the checkpoint's "
            f"({len(found)} vs {len(trained)} classes); evaluate on the data the "
            "model was trained for"
        )


def format_evaluation(m: dict) -> str:
    lines = [
        f"{m['dataset']}: {m['images']} test images, {m['checkpoint']} "
        + ("in ONNX Runtime " if m.get("runtime") == "onnx" else "")
        + f"(epoch {m['epoch']}"
        + (f" + {m['steps_into_next_epoch']} steps" if m.get("steps_into_next_epoch") else "")
        + ")",
        f"  top-1 {m['top1']:.2%}{_top5(m)}   loss {m['loss']:.4f}",
    ]
    if "macro_f1" in m:
        lines.append(
            f"  macro-F1 {m['macro_f1']:.4f}   ECE {m['calibration']['ece']:.4f} (15 bins)"
            + ("   TTA: flip" if m.get("tta") == "flip" else "")
            + ("   EMA weights" if m.get("weights") == "ema" else "")
        )
    if "agreement" in m:
        a = m["agreement"]
        lines.append(
            f"  predictions that differ from the checkpoint's ({a['compared_with']}): "
            f"{a['differ']} of {a['images']}" + (f" ({a['why']})" if a["differ"] else "")
        )
    if "ema" in m:
        e = m["ema"]
        lines.append(f"  EMA weights: top-1 {e['top1']:.2%}{_top5(e)}")
    if "superclass_top1" in m:
        lines.append(f"  superclass top-1 {m['superclass_top1']:.2%}")
        lines.append("  per superclass (fine top-1 / superclass top-1):")
        for name, v in m["per_superclass"].items():
            name = display_name(name, DISPLAY_LIMIT)
            lines.append(f"    {name:<32} {v['fine_top1']:7.2%}  {v['superclass_top1']:7.2%}")
    per_class = sorted(m["per_class"].items(), key=lambda kv: kv[1])
    if per_class:
        # Names as shown (controls visible, long ones cut); the JSON keeps them whole.
        shown = dict(zip(m["per_class"], display_names(list(m["per_class"]), DISPLAY_LIMIT)))
        worst = ", ".join(f"{shown[c]} {a:.0%}" for c, a in per_class[:5])
        best = ", ".join(f"{shown[c]} {a:.0%}" for c, a in per_class[::-1][:5])
        lines.append(f"  hardest classes: {worst}")
        lines.append(f"  easiest classes: {best}")
    return "\n".join(lines)


def _top5(m: dict) -> str:
    # Absent with 5 classes or fewer (metrics.top5_applies): it would always read 100%.
    return f"   top-5 {m['top5']:.2%}" if m.get("top5") is not None else ""
