"""Bring a trained Keras model of the report's architecture in as a cifar100 run directory.

cifar100 import-keras report_model.h5 --out runs/report-keras
cifar100 evaluate runs/report-keras          # then evaluate, predict, or fine-tune it:
cifar100 train --preset seed --set model.init=runs/report-keras
"""

from __future__ import annotations

from pathlib import Path

from cifar100.config import Config, DataConfig
from cifar100.errors import DataError
from cifar100.runtime import run_dir as runs
from cifar100.runtime.checkpoint import save_checkpoint
from cifar100.runtime.device import environment_info
from cifar100.weights.keras import load_keras_report_model


def import_keras_model(
    path: str | Path,
    out: str | Path,
    data: DataConfig,
    cache_dir: Path,
    class_names: list[str] | None = None,
    preprocess: str | None = None,
    progress: bool = True,
) -> Path:
    """Convert `path` (.h5 or .keras, as `model.save` writes them) into a run directory."""
    import torch

    out = Path(out)
    runs.check_new_run_dir(out, hint="choose another --out, or remove {path} first")
    imported = load_keras_report_model(path)
    arch = imported.architecture
    meta = _class_meta(data, cache_dir, class_names, progress)
    if len(meta["classes"]) != arch.num_classes:
        raise DataError(
            f"{path}: the model has {arch.num_classes} outputs but "
            f"{len(meta['classes'])} class names were found; pass --dataset or "
            "--class-names for the data it was trained on"
        )
    cfg = Config(preset="import-keras", description=f"imported from Keras model {path}", data=data)
    cfg.model = arch.model_config()
    cfg.model.preprocess = preprocess or arch.preprocess
    runs.prepare_run_dir(
        out,
        cfg,
        {**environment_info(torch.device("cpu")), "imported_from": str(Path(path).resolve())},
    )
    save_checkpoint(
        {
            "config": cfg.to_dict(),
            **meta,
            "model": imported.state_dict,
            "phase": "imported",
            "epoch": 0,
            "best_val_top1": -1.0,
            "image_size": arch.input_size or data.image_size,
            "imported_from": str(path),
        },
        out / "last.pt",
    )
    return out


def _class_meta(data: DataConfig, cache_dir: Path, names: list[str] | None, progress: bool) -> dict:
    """Class names (and CIFAR-100's superclasses) from the data, unless given."""
    if names is not None:
        return {
            "classes": names,
            "coarse_classes": None,
            "fine_to_coarse": None,
            "dataset": "custom",
        }
    from cifar100.data import load_data
    from cifar100.data.tensors import fine_to_coarse

    splits = load_data(data, cache_dir, progress=progress)
    return {
        "classes": splits.classes,
        "coarse_classes": splits.train.coarse_classes,
        "fine_to_coarse": fine_to_coarse(splits.train, splits.test),
        "dataset": splits.name,
    }
