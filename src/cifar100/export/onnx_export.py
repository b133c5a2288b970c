"""`--format onnx`: the model as one ONNX file checked against PyTorch (optionally int8), with
its ModelInfo and the digest of its graph; its temperature and "none of these" rule are
computed in the graph (export/onnx_file.py).

    write_onnx_export(ExportJob(model, "onnx", Path("runs/r/model.onnx")))
"""

from __future__ import annotations

import numpy as np

from cifar100.errors import ConfigError
from cifar100.export.job import CALIBRATION_IMAGES, CHECK_IMAGES, ExportJob, ExportResult
from cifar100.export.onnx_file import export_onnx, quantize_onnx_int8
from cifar100.export.onnx_metadata import metadata, seal_onnx


def write_onnx_export(job: ExportJob) -> ExportResult:
    """Export, check against PyTorch on the job's test images, quantise if asked, seal."""
    model, out, quantize = job.model, job.out, job.quantize
    module = job.torch_module()
    train, test, note = _images(job)
    fp32 = out if not quantize else out.with_name(out.name.replace(".int8", "") + ".fp32.tmp")
    try:
        details = export_onnx(
            module.float(),
            model.image_size,
            metadata(model),
            fp32,
            test,
            temperature=model.temperature,
            rule=model.ood_rule,
        )
        if quantize:
            details["int8"] = quantize_onnx_int8(fp32, out, train, test)
    finally:
        if quantize:
            fp32.unlink(missing_ok=True)
    seal_onnx(out)
    return ExportResult(out, "onnx", details, note)


def _images(job: ExportJob) -> tuple[np.ndarray | None, np.ndarray, str]:
    """(calibration images, check images, a note) for an ONNX export."""
    if job.images is not None:
        train, test = job.images
        return train[:CALIBRATION_IMAGES], test[:CHECK_IMAGES], ""
    if job.quantize:
        raise ConfigError("--quantize int8 calibrates on training images: pass --data PATH")
    rng = np.random.default_rng(0)
    size = job.model.image_size
    test = rng.integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    note = (
        "checked against PyTorch on 32 random images: the model's data was not found "
        "(pass --data PATH to check on real images)"
    )
    return None, test, note
