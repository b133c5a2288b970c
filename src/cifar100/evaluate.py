"""Test-set evaluation: top-1, top-5, F1, calibration, per class and per superclass."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifar100.data import load_data
from cifar100.data.tensors import DataSplits, ImageSet, fine_to_coarse, split_holdout
from cifar100.errors import CifarError, DataError
from cifar100.metrics import classification_metrics
from cifar100.paths import resolve_cache_dir
from cifar100.predictions_file import read_predictions, write_predictions
from cifar100.runtime.checkpoint import Checkpoint
from cifar100.runtime.evaluation import Evaluation, tested_checkpoint
from cifar100.runtime.run_dir import RunDir, file_predictions, read_json_or_none
from cifar100.runtime.trained_model import TrainedModel, load
from cifar100.runtime.trust import fit_trust, ood_record


def variant_suffix(
    which: str | None = None, tta_flip: bool = False, ema: bool = False, target: str | Path = ""
) -> str:
    """ "" for a run's own evaluation (the checkpoint its test used, raw weights, no TTA), else
    e.g. "-last-tta": `which` names a checkpoint of the run directory `target` other than
    its tested one (evaluation.tested_checkpoint).

    Other variants go to their own files (evaluation-ema.json, predictions-ema.npz, ...), so
    they never replace the run's record that `report` and `compare` read.
    """
    tested = tested_checkpoint(target) if which and Path(target).is_dir() else which
    parts = ([which] if which and which != tested else []) + (["ema"] if ema else [])
    return "".join(f"-{p}" for p in parts + (["tta"] if tta_flip else []))


def evaluate_checkpoint(
    target: str | Path,
    which: str | None = None,
    data_path: str | None = None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    tta_flip: bool = False,
    ema: bool = False,
    predictions_path: str | Path | None = None,
    ood_acceptance: float | None = None,
) -> Evaluation:
    """Evaluate a trained model (a run directory's checkpoint, a checkpoint, or an export) on
    its data's test split (or the data at `data_path`).

    Also writes the test predictions (see `save_predictions`) to `predictions_path`, by
    default RUN_DIR/predictions{variant}.npz or FILE.predictions{variant}.npz. When the
    checkpoint keeps an EMA, the plain evaluation also reports it (as training does).

    A checkpoint saved without a temperature and a "none of these" rule (before they existed)
    gets them fitted on its validation split and saved into it; `ood_acceptance` fits them
    again, the rule to accept that share of the validation images.
    """
    if ood_acceptance is not None and not 0 < ood_acceptance <= 1:
        raise DataError(f"ood_acceptance {ood_acceptance!r}: a share in (0, 1], e.g. 0.95")
    model = load(target, device=device, checkpoint=which, ema=ema)
    info, cfg = model.info, model.info.config
    splits = model_data(model, data_path, cache_dir, progress)
    test = splits.test
    mapping = info.fine_to_coarse or fine_to_coarse(test)
    coarse = info.coarse_classes or test.coarse_classes
    batch_size = batch_size or cfg.train.eval_batch_size
    plain = not (ema or tta_flip or data_path)
    fitted = _fit_if_asked(model, splits.train, batch_size, progress, ood_acceptance, plain)
    logits = model.logits(test.images, batch_size, tta_flip, progress)
    metrics = classification_metrics(logits, test.labels, test.classes, mapping, coarse,
                                     info.temperature)  # fmt: skip
    metrics["ood"] = ood_record(model.ood_rule, logits)
    if not ema and not tta_flip and info.has_ema:
        average = load(model.source, device=device, ema=True)
        summary = classification_metrics(average.logits(test.images, batch_size), test.labels,
                                         test.classes)  # fmt: skip
        metrics["ema"] = {k: summary[k] for k in ("loss", "top1", "top5") if k in summary}
    agreement = _agreement(model, logits, test) if not tta_flip else None
    variant = variant_suffix(which, tta_flip, ema, target)
    if predictions_path is None:
        target = Path(target)
        predictions_path = (
            RunDir(target).predictions_variant(variant)
            if target.is_dir()
            else file_predictions(target, variant)
        )
    # Variants keep their logits only: the images (30 MB for CIFAR-100) are the plain one's.
    save_predictions(predictions_path, logits, test, mapping, coarse, images=variant == "")
    extra: dict[str, Any] = {"tta": "flip" if tta_flip else "none", "runtime": model.runtime}
    if fitted:
        extra["fitted_now"] = fitted
    if ema:
        extra["weights"] = "ema"
        extra["ema_updates"] = info.ema_updates
    return Evaluation.of(
        checkpoint=str(model.source),
        epoch=info.epoch,  # whole epochs trained
        train_wall_s=_train_wall(info.run, info.epoch),
        # A run stopped mid-epoch: this many steps of the next epoch are in the weights too.
        steps_into_next_epoch=info.steps_into_next_epoch or None,
        dataset=splits.name,
        **extra,
        **metrics,
        agreement=agreement,
        predictions=str(predictions_path),
    )


def model_data(
    model: TrainedModel,
    data_path: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> DataSplits:
    """The splits of the data `model` was trained on (or of the data at `data_path`), checked
    to have its classes and image size."""
    cfg = model.info.config
    data_cfg = replace(cfg.data, path=data_path) if data_path else cfg.data
    splits = load_data(
        data_cfg, resolve_cache_dir(cache_dir), seed=cfg.train.seed, progress=progress
    )
    _check_classes(model.info.classes, splits.test.classes, data_cfg.path or data_cfg.dataset)
    _check_size(splits.test.image_size, model.image_size, data_cfg.path or data_cfg.dataset)
    return splits


def _fit_if_asked(model, train, batch_size, progress, acceptance, plain) -> dict | None:
    """fit_checkpoint where asked (`acceptance`) or where the checkpoint has no temperature:
    on its own validation split, so only in a plain evaluation of the run's own data."""
    if acceptance is None and model.info.temperature is not None:
        return None
    if not plain:
        if acceptance is None:
            return None
        raise DataError(
            "--ood-acceptance fits the checkpoint's rule on its own validation split: give it "
            "without --ema, --tta or --data"
        )
    return fit_checkpoint(model, train, batch_size, progress, acceptance)


def fit_checkpoint(
    model: TrainedModel,
    train: ImageSet,
    batch_size: int,
    progress: bool,
    acceptance: float | None = None,
) -> dict[str, Any] | None:
    """The temperature and the "none of these" rule (accepting `acceptance` of validation,
    by default the run's train.ood_acceptance) fitted now on the checkpoint's validation split
    (the one training held out: same fraction, same seed) and saved into the checkpoint, so
    its exports carry them too: for a checkpoint saved before models kept them, or to change
    the acceptance. What was fitted, or None where nothing can be (an export, no validation
    split)."""
    info, source = model.info, model.source
    cfg = info.config
    if source.suffix != ".pt" or model.module is None or not cfg.data.val_fraction:
        if acceptance is not None:
            raise DataError(
                f"{source}: --ood-acceptance fits a checkpoint's rule on its validation split; "
                "give a run or checkpoint trained with one (data.val_fraction > 0), then export "
                "it again"
            )
        return None
    _, val = split_holdout(train, cfg.data.val_fraction, cfg.train.seed)
    val_logits = model.logits(val.images, batch_size, progress=progress)
    temperature, rule = fit_trust(val_logits, val.labels, acceptance or cfg.train.ood_acceptance)
    if temperature is None:
        return None
    ckpt = Checkpoint.load(source)
    ckpt.info.temperature, ckpt.info.ood = temperature, rule and rule.to_json()
    ckpt.save(source)
    info.temperature, info.ood = ckpt.info.temperature, ckpt.info.ood
    return {"temperature": temperature, "ood": info.ood, "saved_in": str(source),
            "validation_images": len(val)}  # fmt: skip


def _train_wall(run: str | None, epoch: int | None) -> float | None:
    """The run's whole wall time, as training recorded it in RUN/evaluation.json for these
    weights: a fact of the run that evaluating it again keeps (compare shows it)."""
    record = read_json_or_none(RunDir(run).evaluation) if run else None
    if not isinstance(record, dict) or record.get("epoch") != epoch:
        return None
    return record.get("train_wall_s")


def _agreement(model, logits: torch.Tensor, test: ImageSet) -> dict[str, Any] | None:
    """For an export: how many test predictions differ from its checkpoint's, as that run's
    evaluation recorded them (RUN/predictions.npz), and why they may."""
    record = RunDir(model.info.run or "").predictions
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
    # matplotlib (which plots.predictions draws with) on first use: training imports this module
    from cifar100.plots.explanations import pick_explained
    from cifar100.plots.predictions import example_indices

    arrays: dict[str, np.ndarray] = {
        "labels": data.labels.cpu().numpy().astype(np.int64),
        "logits": logits.float().cpu().numpy().astype(np.float32),
        "classes": np.array(data.classes, dtype=str),
    }
    if images:  # about 100 images at most, not the whole test set (30 MB for CIFAR-100)
        labels, preds = arrays["labels"], arrays["logits"].argmax(axis=1)
        shown = np.union1d(
            example_indices(labels, preds), example_indices(labels, preds, only_wrong=True)
        )
        # and those the report explains, chosen from the whole test set: the most confident
        # mistakes and right answers (a few dozen more at most)
        probabilities = torch.from_numpy(arrays["logits"]).softmax(1).numpy()
        explained = pick_explained(labels, probabilities, np.arange(len(labels)))
        shown = np.union1d(shown, np.concatenate(explained))
        arrays["image_index"] = shown.astype(np.int64)
        arrays["images"] = data.images[torch.from_numpy(shown)].cpu().numpy().astype(np.uint8)
    if fine_to_coarse is not None and coarse_classes is not None:
        arrays["coarse_classes"] = np.array(coarse_classes, dtype=str)
        arrays["fine_to_coarse"] = np.array(fine_to_coarse, dtype=np.int64)
    write_predictions(path, arrays)


def _check_size(found: int, takes: int, source: str) -> None:
    if found != takes:
        raise DataError(
            f"{source}: its images are {found}px, the model takes {takes}px; evaluate on the "
            "data it was trained for"
        )


def _check_classes(trained: list[str], found: list[str], source: str) -> None:
    if list(trained) != list(found):
        raise DataError(
            f"{source}: its classes differ from the checkpoint's "
            f"({len(found)} vs {len(trained)} classes); evaluate on the data the "
            "model was trained for"
        )
