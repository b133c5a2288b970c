"""Bring a trained Keras model of the report's architecture in as a cifar100 run directory.

cifar100 import-keras report_model.h5 --out runs/report-keras
cifar100 evaluate runs/report-keras          # then evaluate, predict, or fine-tune it:
cifar100 train --preset seed --set model.init=runs/report-keras
"""

from __future__ import annotations

from pathlib import Path

import torch

from cifar100.config import Config, DataConfig
from cifar100.data import load_data
from cifar100.data.tensors import fine_to_coarse
from cifar100.errors import DataError
from cifar100.models.keras_report import load_keras_report_model
from cifar100.runtime import run_dir as runs
from cifar100.runtime.checkpoint import Checkpoint
from cifar100.runtime.device import environment_info
from cifar100.runtime.model_info import ModelInfo
from cifar100.runtime.run_dir import RunDir


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
    out = RunDir(out)
    runs.check_new_run_dir(out.path, hint="choose another --out, or remove {path} first")
    imported = load_keras_report_model(path)
    arch = imported.architecture
    cfg = Config(preset="import-keras", description=f"imported from Keras model {path}", data=data)
    cfg.model = arch.model_config()
    cfg.model.preprocess = preprocess or arch.preprocess
    size = arch.input_size or data.image_size
    info = _model_info(cfg, size, cache_dir, class_names, progress)
    if len(info.classes) != arch.num_classes:
        raise DataError(
            f"{path}: the model has {arch.num_classes} outputs but "
            f"{len(info.classes)} class names were found; pass --dataset or "
            "--class-names for the data it was trained on"
        )
    info.imported_from = str(path)
    runs.prepare_run_dir(
        out.path,
        cfg,
        {**environment_info(torch.device("cpu")), "imported_from": str(Path(path).resolve())},
    )
    Checkpoint(info, imported.state_dict, phase="imported").save(out.last)
    return out.path


def _model_info(
    cfg: Config, size: int, cache_dir: Path, names: list[str] | None, progress: bool
) -> ModelInfo:
    """The model's facts: class names (and CIFAR-100's superclasses) from the data, unless
    given."""
    if names is not None:
        return ModelInfo(config=cfg, classes=names, image_size=size)
    splits = load_data(cfg.data, cache_dir, progress=progress)
    return ModelInfo(
        config=cfg,
        classes=splits.classes,
        image_size=size,
        dataset=splits.name,
        coarse_classes=splits.train.coarse_classes,
        fine_to_coarse=fine_to_coarse(splits.train, splits.test),
    )
