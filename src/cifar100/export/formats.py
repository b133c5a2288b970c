"""`cifar100 export`: a trained model written in one of the formats other tools run.

    export_model(cifar100.load("runs/r"), "onnx")              # runs/r/model.onnx
    export_model(model, "onnx", quantize="int8", data=images)  # runs/r/model.int8.onnx
    export_model(model, "triton", name="cifar100")              # runs/r/triton/cifar100/...

Every export carries the model's ModelInfo (classes, image size, settings, provenance), and the
ONNX and safetensors ones a digest that `cifar100.load` checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar100.errors import ConfigError, ModelError
from cifar100.fileio import check_writable
from cifar100.runtime.trained_model import TrainedModel

FORMATS = ("onnx", "safetensors", "keras", "triton")
SUFFIX = {"onnx": ".onnx", "safetensors": ".safetensors", "keras": ".keras", "triton": ""}
CHECK_IMAGES = 256  # real images ONNX Runtime is compared with PyTorch on
CALIBRATION_IMAGES = 512  # training images int8 quantisation is calibrated on


@dataclass
class ExportResult:
    path: Path
    format: str
    details: dict  # what the exporter checked or measured (e.g. max |difference|)
    note: str = ""  # something the user should know (e.g. no real images to check on)


def default_output(model: TrainedModel, fmt: str, quantize: str | None = None) -> Path:
    """RUN_DIR/model.FORMAT (RUN_DIR/triton for a repository); beside a file for a file."""
    source = model.source
    folder = source.parent
    stem = "model" if model.info.run else source.stem
    if fmt == "triton":
        return folder / "triton"
    return folder / f"{stem}{'.int8' if quantize else ''}{SUFFIX[fmt]}"


def export_model(
    model: TrainedModel,
    fmt: str,
    out: str | Path | None = None,
    *,
    force: bool = False,
    quantize: str | None = None,
    name: str = "cifar100",
    images: tuple[np.ndarray, np.ndarray] | None = None,
    max_batch: int = 64,
) -> ExportResult:
    """Write `model` as `fmt` to `out` (default: `default_output`).

    images: (training images, test images), uint8 (N, size, size, 3), for int8 calibration and
    for checking the ONNX graph against PyTorch; None: random test images, no calibration.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize {quantize!r}: only int8 is offered")
    if quantize and fmt not in ("onnx", "triton"):
        raise ConfigError("--quantize int8 is for ONNX (and Triton) exports")
    if fmt == "triton":  # before the slow ONNX export: a name labels.txt cannot hold
        from cifar100.export.triton_repo import check_label_names

        check_label_names(model.classes)
    out = Path(out) if out else default_output(model, fmt, quantize)
    if fmt != "triton" and out.exists() and not force:  # a repository may hold other models
        raise ConfigError(f"{out} exists; pass --force to replace it, or another --out")
    check_writable(out / name if fmt == "triton" else out, f"{fmt} export")
    if fmt == "safetensors":
        from cifar100.export.safetensors_file import write_safetensors

        _need_torch(model, fmt)
        write_safetensors(model.info, model.module.state_dict(), out)
        return ExportResult(out, fmt, {"tensors": len(model.module.state_dict())})
    if fmt == "keras":
        from cifar100.export.keras_file import write_keras_model

        _need_torch(model, fmt)
        write_keras_model(model.module, model.info.model, model.image_size, out)
        return ExportResult(out, fmt, {})
    if fmt == "onnx":
        return _onnx(model, out, quantize, images)
    return _triton(model, out, name, quantize, images, max_batch, force)


def model_images(
    model: TrainedModel, data_path: str | None = None, cache_dir: str | Path | None = None
) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """(training images, test images) of the model's data (or the data at `data_path`), for
    calibration and checks; (None, why) when that data cannot be had here."""
    from dataclasses import replace

    from cifar100.data import load_data
    from cifar100.errors import CifarError
    from cifar100.paths import resolve_cache_dir

    cfg = model.info.config
    data = replace(cfg.data, path=data_path) if data_path else cfg.data
    try:
        splits = load_data(data, resolve_cache_dir(cache_dir), seed=cfg.train.seed, progress=False)
    except CifarError as e:
        return None, str(e)
    if splits.test.image_size != model.image_size or splits.classes != model.classes:
        return None, f"{data.path or data.dataset} is not the data this model was trained for"
    rng = np.random.default_rng(0)

    def pick(images, n: int) -> np.ndarray:  # a spread of classes, not the first n images
        return images.images[np.sort(rng.permutation(len(images))[:n])].numpy()

    return (pick(splits.train, CALIBRATION_IMAGES), pick(splits.test, CHECK_IMAGES)), ""


def _need_torch(model: TrainedModel, fmt: str) -> None:
    if model.module is None:
        raise ModelError(
            f"{model.source}: an ONNX export holds no PyTorch weights to write as {fmt}; "
            "export from its run directory, checkpoint or safetensors file"
        )


def metadata(model: TrainedModel) -> dict[str, str]:
    """The ONNX metadata_props: the whole ModelInfo, and its main facts readable on their own."""
    info = model.info
    facts = {
        "classes": json.dumps(info.classes),
        "image_size": str(info.image_size),
        "backbone": info.backbone,
        "preprocessing": info.preprocessing,
        "dataset": info.dataset,
        "source_run": info.run or str(model.source),
        "commit": info.commit or "",
        "test_top1": "" if info.test_top1 is None else f"{info.test_top1:.6f}",
    }
    return {"cifar100.model": json.dumps(info.to_json()), **facts}


def _onnx(model, out: Path, quantize, images) -> ExportResult:
    from cifar100.export.onnx_file import export_onnx, quantize_onnx_int8
    from cifar100.export.onnx_runtime import seal_onnx

    _need_torch(model, "onnx")
    train, test, note = _images(model, images, quantize)
    fp32 = out if not quantize else out.with_name(out.name.replace(".int8", "") + ".fp32.tmp")
    try:
        details = export_onnx(model.module.float(), model.image_size, metadata(model), fp32, test)
        if quantize:
            details["int8"] = quantize_onnx_int8(fp32, out, train)
    finally:
        if quantize:
            fp32.unlink(missing_ok=True)
    seal_onnx(out)
    return ExportResult(out, "onnx", details, note)


def _triton(model, out: Path, name, quantize, images, max_batch, force) -> ExportResult:
    import tempfile

    from cifar100.export.triton_repo import write_triton_repository

    details, note = {}, ""
    # Beside the repository, not in it: Triton takes every folder there for a model.
    with tempfile.TemporaryDirectory(dir=_existing_parent(out.parent)) as tmp:
        if model.runtime == "onnx":  # already an ONNX export: Triton runs that file
            onnx_path = model.source
        else:
            onnx_path = Path(tmp) / "model.onnx"
            result = _onnx(model, onnx_path, quantize, images)
            details, note = result.details, result.note
        repo = write_triton_repository(
            onnx_path, out, name, model.classes, max_batch=max_batch, force=force
        )
    return ExportResult(repo, "triton", details, note)


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _images(model, images, quantize) -> tuple[np.ndarray | None, np.ndarray, str]:
    """(calibration images, check images, a note) for an ONNX export."""
    if images is not None:
        train, test = images
        return train[:CALIBRATION_IMAGES], test[:CHECK_IMAGES], ""
    if quantize:
        raise ConfigError("--quantize int8 calibrates on training images: pass --data PATH")
    rng = np.random.default_rng(0)
    test = rng.integers(0, 256, (32, model.image_size, model.image_size, 3), dtype=np.uint8)
    note = (
        "checked against PyTorch on 32 random images: the model's data was not found "
        "(pass --data PATH to check on real images)"
    )
    return None, test, note
