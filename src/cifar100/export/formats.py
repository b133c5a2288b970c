"""`cifar100 export`: a trained model written in one of the formats other tools run.

    export_model(cifar100.load("runs/r"), "onnx")              # runs/r/model.onnx
    export_model(model, "onnx", quantize="int8", images=data)  # runs/r/model.int8.onnx
    export_model(model, "triton", name="cifar100")              # runs/r/triton/cifar100/...

Each format is one entry in FORMATS: its name (--format), its suffix, its writer, and the
reader `cifar100.load` reads it back with (or None); see "How to add an export format" in
docs/development.md. Every export carries the model's ModelInfo (classes, image size,
settings, provenance), and the ONNX and safetensors ones a digest that `cifar100.load` checks.

Light to import: the CLI's parser reads FORMATS for --format's choices at every start, so the
built-in writers import their modules (torch, onnx, h5py) when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cifar100.errors import CifarError, ConfigError
from cifar100.export.job import CALIBRATION_IMAGES, CHECK_IMAGES, ExportJob, ExportResult
from cifar100.fileio import check_writable
from cifar100.paths import resolve_cache_dir
from cifar100.runtime.model_files import Reader, read_onnx, read_safetensors, register_reader

if TYPE_CHECKING:
    import numpy as np

    from cifar100.runtime.trained_model import TrainedModel

__all__ = ["FORMATS", "ExportFormat", "ExportResult", "export_model", "register_format"]

Writer = Callable[[ExportJob], ExportResult]


@dataclass(frozen=True)
class ExportFormat:
    """One export format: what --format names, what export_model writes, what load reads."""

    name: str
    # The file's suffix, which `cifar100.load` finds its reader by; "" for a folder (written to
    # RUN_DIR/<name> by default), whose writer checks its own target.
    suffix: str
    writer: Writer
    reader: Reader | None = None  # registered with cifar100.runtime.model_files for load()
    quantizes: bool = False  # takes --quantize int8
    description: str = ""  # what it holds, in a few words (the parser's --format help)
    # A folder format's check of its target (out, name, force), run before any slow step.
    check_target: Callable[[Path, str, bool], None] | None = None


FORMATS: dict[str, ExportFormat] = {}  # name -> format; iterating gives the names


def register_format(fmt: ExportFormat) -> ExportFormat:
    """Make `fmt` a --format choice of `cifar100 export` (and readable by load, with a reader)."""
    if fmt.name in FORMATS:
        raise ValueError(f"export format {fmt.name!r} is registered twice")
    if fmt.reader is not None:
        register_reader(fmt.suffix, fmt.reader)
    FORMATS[fmt.name] = fmt
    return fmt


def default_output(model: TrainedModel, fmt: str, quantize: str | None = None) -> Path:
    """RUN_DIR/model.SUFFIX (RUN_DIR/NAME for a folder format); beside a file for a file."""
    entry = FORMATS[fmt]
    folder = model.source.parent
    if not entry.suffix:
        return folder / entry.name
    stem = "model" if model.info.run else model.source.stem
    return folder / f"{stem}{'.int8' if quantize else ''}{entry.suffix}"


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
    entry = FORMATS.get(fmt)
    if entry is None:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize {quantize!r}: only int8 is offered")
    if quantize and not entry.quantizes:
        quantizing = " and ".join(f.name for f in FORMATS.values() if f.quantizes)
        raise ConfigError(f"--quantize int8 is for {quantizing} exports")
    out = check_output(model, fmt, out, force=force, quantize=quantize, name=name)
    job = ExportJob(
        model,
        fmt,
        out,
        force=force,
        quantize=quantize,
        name=name,
        images=images,
        max_batch=max_batch,
    )
    return entry.writer(job)


def check_output(
    model: TrainedModel,
    fmt: str,
    out: str | Path | None = None,
    *,
    force: bool = False,
    quantize: str | None = None,
    name: str = "cifar100",
) -> Path:
    """Where the export goes, refused at once if it exists (unless `force`): before the work
    (reading data, exporting) that a refusal would waste. Returns the path."""
    entry = FORMATS[fmt]
    out = Path(out) if out else default_output(model, fmt, quantize)
    if entry.suffix:  # a file; a folder format may hold other entries, and checks its own
        if out.exists() and not force:
            raise ConfigError(f"{out} exists; pass --force to replace it, or another --out")
        check_writable(out, f"{fmt} export")
    elif entry.check_target is not None:
        entry.check_target(out, name, force)
    return out


def model_images(
    model: TrainedModel, data_path: str | None = None, cache_dir: str | Path | None = None
) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """(training images, test images) of the model's data (or the data at `data_path`), for
    calibration and checks; (None, why) when that data cannot be had here."""
    # Heavy (numpy, the data package with torch): this module is read at every CLI start.
    import numpy as np

    from cifar100.data import load_data

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


# --- the built-in formats: each writer imports its module when it runs (torch, onnx, h5py are
# heavy, and this module is read at every CLI start) ----------------------------------------


def _write_onnx(job: ExportJob) -> ExportResult:
    from cifar100.export.onnx_export import write_onnx_export  # heavy: see above

    return write_onnx_export(job)


def _write_safetensors(job: ExportJob) -> ExportResult:
    from cifar100.export.safetensors_file import write_safetensors_export  # heavy: see above

    return write_safetensors_export(job)


def _write_keras(job: ExportJob) -> ExportResult:
    from cifar100.export.keras_file import write_keras_export  # heavy: see above

    return write_keras_export(job)


def _write_triton(job: ExportJob) -> ExportResult:
    from cifar100.export.triton_repo import write_triton_export  # heavy: see above

    return write_triton_export(job)


def _check_triton(out: Path, name: str, force: bool) -> None:
    from cifar100.export.triton_repo import check_target  # heavy: see above

    check_target(out / name, force)


register_format(
    ExportFormat(
        "onnx",
        ".onnx",
        _write_onnx,
        reader=read_onnx,
        quantizes=True,
        description="uint8 images in; probabilities, OOD score and verdict out",
    )
)
register_format(
    ExportFormat(
        "safetensors",
        ".safetensors",
        _write_safetensors,
        reader=read_safetensors,
        description="weights and settings",
    )
)
register_format(
    ExportFormat("keras", ".keras", _write_keras, description="a .keras file (ResNet50V2 models)")
)
register_format(
    ExportFormat(
        "triton",
        "",
        _write_triton,
        quantizes=True,
        description="a Triton model repository",
        check_target=_check_triton,
    )
)
